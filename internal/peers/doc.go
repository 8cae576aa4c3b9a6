// Package peers starts real mail servers from Debian packages for a test:
// Postfix relay instances, Postfix's smtp-sink, and Dovecot IMAP instances
// (single or as a pair kept equal with dsync). Each listens on a free
// 127.0.0.1 port, lives in its own temporary directory and is stopped, with
// every process it started, at t.Cleanup.
//
// The servers need their binaries (packages postfix and dovecot-imapd) and
// root, because Postfix and Dovecot switch to their own users. When either
// is missing the test is skipped with a message saying what is missing,
// unless the environment sets HAMAIL_REQUIRE_PEERS=1, in which case the test
// fails instead: continuous integration sets it so that a broken
// installation cannot pass as a skipped test.
//
// Postfix: an instance has its own config directory, which Postfix accepts
// only when it is listed in alternate_config_directories of the default
// /etc/postfix/main.cf. StartPostfix adds the directory there under a file
// lock (creating main.cf if it does not exist), so tests in several
// processes can start instances in parallel, and removes it again at
// cleanup. The instance runs `postfix -c DIR start-fg` with its log on
// standard output, captured and shown in the test log when the test fails.
//
// Dovecot: an instance runs `dovecot -F -c FILE` with its own base_dir,
// state_dir and instance_name, one passwd-file user with a plaintext
// password (plaintext authentication is allowed: loopback only, no TLS), and
// maildir storage. The mail user is the system user nobody (uid 65534),
// which exists on every Debian system. A DovecotPair is two instances with
// the same user, started as copies of each other; Sync runs dsync between
// them on demand (doveadm sync to the other instance's doveadm listener),
// which keeps UIDs and UIDVALIDITY, so tests of replica failover are
// deterministic. Login and Append give a logged-in go-imap client and put a
// message into a mailbox.
//
// Instances are safe to use from the test's goroutines; Stop and Start are
// meant to be called from the test goroutine. Every helper takes a
// testing.TB and fails the test on error, so benchmarks can use them too.
package peers
