package main

import (
	"fmt"
	"strings"
)

// usageText is what hasend -help prints.
func usageText() string {
	var b strings.Builder
	b.WriteString(`Usage:
  hasend [-t] [-i] [-f sender] [-F name] [options] [recipient ...] < message
  hasend -queue DIR -run [options]

Reads one message (RFC 5322 header and body) on standard input and sends it.
Recipients are the arguments (address lists: "a@example.org, Bob <b@example.org>";
a bare name such as root gets @domain), plus those of the header with -t.

Sendmail options:
  -t            also send to the To, Cc and Bcc addresses of the header (the
                Resent-To, -Cc, -Bcc ones when present); Bcc fields are removed
                from the message in any case
  -i, -oi       a line with a single dot does not end the input
  -f ADDR       envelope sender (also -r); "<>" is the null sender; default:
                "from" setting, else USER@domain
  -F NAME       display name of the From field added when the message has none
  -v            print each recipient's outcome and the SMTP dialogue on stderr
  -N DSN        NOTIFY (RFC 3461): never, or success,failure,delay
  -R RET        full or hdrs: what a failure notice returns
  -V ENVID      DSN envelope identifier
  -C FILE       same as -config
  Accepted and ignored: -odi -odb -odq (hasend always finishes delivering or
  queueing before it exits), -oem -oep -oee (errors are always reported in the
  exit status and on stderr), -om -oo -o7 -o8 -bm -n -m -U -G -B -L -X -h -p -O
  -A -d. Other -oX are ignored with a warning. -bi (newaliases) does nothing
  and exits 0: there is no alias database. Refused (exit 64): -bs, -bd, -bp,
  -bt, -bv and the other -b modes, and -q.

hasend options (one or two dashes; "-name value" or "-name=value"):
  -config FILE  config file (default $HASEND_CONFIG, else /etc/hasend.conf if
                it exists)
  -run          with -queue: run the queue until SIGTERM/SIGINT: pick up what
                hasend dropped in DIR/maildrop, deliver, retry, bounce
`)
	for _, st := range settingTable {
		if st.secret {
			continue
		}
		arg, help := "", st.help
		if i := strings.IndexByte(help, '`'); i >= 0 {
			if j := strings.IndexByte(help[i+1:], '`'); j >= 0 {
				arg = " " + strings.ToUpper(help[i+1:i+1+j])
				help = help[:i] + help[i+1:i+1+j] + help[i+2+j:]
			}
		}
		fmt.Fprintf(&b, "  -%s%s\n", strings.ReplaceAll(st.key, "_", "-"), arg)
		wrap(&b, fmt.Sprintf("%s [env %s, key %s]", help, st.env, st.key), "                ", 78)
	}
	b.WriteString(`
Precedence: command line > environment > config file. The password is taken
only from HASEND_PASSWORD, the password key of the config file, or a file
(password_file), never from the command line. HASEND_CONFIG names the file.

Config file: one "key = value" per line, # starts a comment line, keys as
above; several relay lines add up. Example:

  relay = smtp.example.org:587, backup.example.org:587
  user = alerts@example.org
  password_file = /etc/hasend.password
  tls = verify
  domain = host1.example.org

With a queue directory, let every user read the config file and only the
queue's owner read password_file: submitting to the queue needs no password.

Modes:
  direct (default)  deliver now through the relays (and the recipients' MX
                    hosts with -mx); exit 0 only when every recipient was
                    accepted
  -queue DIR        write the message durably to DIR/maildrop and exit 0; the
                    process running "hasend -queue DIR -run" (or relayd with
                    -queue-dir DIR) moves it into its queue DIR/queue.db and
                    delivers it, retrying for up to 5 days

Exit statuses (sysexits.h):
  0   delivered (direct) or durably queued (-queue)
  64  usage: bad option, no recipient
  65  data error: malformed address, message too big
  67  a recipient was refused for good (5xx to RCPT)
  68  a recipient's domain does not exist or accepts no mail
  69  the relay refused the message for good (5xx to MAIL or DATA)
  70  internal error
  74  standard input could not be read
  75  temporary failure: not delivered now (4xx, relay unreachable, timeout,
      or the queue directory could not be written); try again later
  77  the relay refused the credentials
  78  configuration error
When recipients fail differently, a permanent status wins over 75; every
failed recipient is listed on stderr.
`)
	return b.String()
}

// wrap writes text as lines of at most width columns after indent.
func wrap(b *strings.Builder, text, indent string, width int) {
	line := indent
	for _, w := range strings.Fields(text) {
		if len(line) > len(indent) && len(line)+1+len(w) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if len(line) > len(indent) {
			line += " "
		}
		line += w
	}
	b.WriteString(line + "\n")
}
