// Package maildrop is the hand-off directory between a command that submits
// mail and exits (hasend -queue DIR) and the long-running process that owns
// the durable queue (hasend -queue DIR -run, or relayd -queue-dir DIR), in the
// manner of Postfix's maildrop directory with postdrop and pickup.
//
// The queue's database is held by one process at a time, so a short-lived
// command cannot write to it while the daemon runs. Instead it writes each
// message to a file of its own and makes it durable before it exits: the file
// is written under tmp/, fsynced, renamed into new/ and the directory fsynced
// (the Maildir discipline), so a reader never sees half a file and a crash
// loses nothing that Drop reported as written. The owner of the queue picks the
// files up, submits each to its queue with the file name as the idempotency
// key, and removes the file only after the queue has made the message durable:
// a crash in between submits it again under the same key, which the queue
// recognises. A file that cannot be decoded, or whose message the queue
// refuses as invalid, is moved to bad/ for a person to look at, never
// deleted.
//
// Layout:
//
//	DIR/tmp/NAME   being written
//	DIR/new/NAME   ready: one JSON line with the envelope, then the message
//	DIR/bad/NAME   could not be decoded or was refused by the queue
//
// A Dir is safe for concurrent use by many writers and one reader (several
// processes may Drop at once; only one should Pickup).
package maildrop

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Envelope is what a maildrop file carries besides the message.
type Envelope struct {
	// From is the reverse-path; "" is the null reverse-path.
	From string `json:"from"`
	// To lists the recipients; at least one.
	To []string `json:"to"`
	// DSN parameters (RFC 3461): NOTIFY as written in RCPT TO ("NEVER",
	// or a list of SUCCESS, FAILURE, DELAY), RET ("FULL" or "HDRS") and
	// ENVID; empty when not given.
	Notify string `json:"notify,omitempty"`
	Ret    string `json:"ret,omitempty"`
	EnvID  string `json:"envid,omitempty"`
	// SMTPUTF8: the header carries UTF-8 (RFC 6532).
	SMTPUTF8 bool `json:"smtputf8,omitempty"`
}

// fileHeader is the first line of a maildrop file.
type fileHeader struct {
	Version int `json:"v"`
	Envelope
}

// ErrBadFile: a maildrop file could not be decoded; it was moved to bad/.
var ErrBadFile = errors.New("maildrop: undecodable file")

// ErrRejected is wrapped by a Submitter's error when the message can never
// be queued as written (the queue refused it as invalid): Pickup then moves
// the file to bad/ and goes on with the next, instead of retrying it.
var ErrRejected = errors.New("maildrop: message rejected by the queue")

// ErrBadEnvelope: Drop refused an envelope that Pickup could not decode
// (no recipient, a line break or NUL in an address, a bad RET or NOTIFY,
// an envelope line over the size bound). Nothing was written.
var ErrBadEnvelope = errors.New("maildrop: bad envelope")

// maxHeaderLine bounds the envelope line of a file.
const maxHeaderLine = 1 << 20

// staleTmp is the age after which a file left in tmp/ by a writer that
// died is removed.
const staleTmp = time.Hour

// Dir is a maildrop directory.
type Dir struct {
	path string
}

// Open returns the maildrop at path, creating it and its subdirectories
// (mode 0700 for those it creates) if needed.
func Open(path string) (*Dir, error) {
	for _, sub := range []string{"tmp", "new", "bad"} {
		if err := os.MkdirAll(filepath.Join(path, sub), 0o700); err != nil {
			return nil, fmt.Errorf("maildrop: %w", err)
		}
	}
	return &Dir{path: path}, nil
}

// Path returns the directory's path.
func (d *Dir) Path() string { return d.path }

// Drop writes the message durably and returns the file's name. When it
// returns nil the message survives a crash of this process and of the
// machine.
func (d *Dir) Drop(env Envelope, body io.Reader) (name string, err error) {
	// What Pickup would move to bad/ is refused here, so that the caller
	// learns of it while it still holds the message.
	if err := env.check(); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadEnvelope, err)
	}
	line, err := json.Marshal(fileHeader{Version: 1, Envelope: env})
	if err != nil {
		return "", fmt.Errorf("maildrop: %w", err)
	}
	if len(line)+1 > maxHeaderLine {
		return "", fmt.Errorf("%w: envelope of %d bytes, more than %d", ErrBadEnvelope, len(line)+1, maxHeaderLine)
	}
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("maildrop: %w", err)
	}
	// Names sort by time, so pickup follows submission order.
	name = fmt.Sprintf("%016x.%s", time.Now().UnixNano(), hex.EncodeToString(r[:]))
	tmp := filepath.Join(d.path, "tmp", name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return "", fmt.Errorf("maildrop: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	w := bufio.NewWriterSize(f, 64<<10)
	w.Write(line)
	w.WriteByte('\n')
	if _, err := io.Copy(w, body); err != nil {
		return "", fmt.Errorf("maildrop: reading the message: %w", err)
	}
	if err := w.Flush(); err != nil {
		return "", fmt.Errorf("maildrop: %w", err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("maildrop: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("maildrop: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(d.path, "new", name)); err != nil {
		return "", fmt.Errorf("maildrop: %w", err)
	}
	// The rename is durable only once the directory is synced.
	if err := syncDir(filepath.Join(d.path, "new")); err != nil {
		return "", fmt.Errorf("maildrop: %w", err)
	}
	return name, nil
}

// Submitter makes a picked-up message durable in a queue. Submit returns
// only once it is; a second Submit with the same key must not queue the
// message twice (queue.Message.Key, hamail.Message.Key).
type Submitter interface {
	Submit(ctx context.Context, key string, env Envelope, body io.Reader) error
}

// SubmitFunc adapts a function to Submitter.
type SubmitFunc func(ctx context.Context, key string, env Envelope, body io.Reader) error

// Submit calls f.
func (f SubmitFunc) Submit(ctx context.Context, key string, env Envelope, body io.Reader) error {
	return f(ctx, key, env, body)
}

// Key is the idempotency key under which the file name is submitted.
func Key(name string) string { return "maildrop:" + name }

// Pickup submits every ready file, oldest first, and removes each once
// submitted. It returns how many were submitted. A file that cannot be
// decoded, or whose Submit fails with ErrRejected, is moved to bad/ and
// reported in the error (wrapping ErrBadFile); the others still go. A failed Submit stops the pass and leaves that file
// and the ones after it for the next pass.
func (d *Dir) Pickup(ctx context.Context, s Submitter) (int, error) {
	d.removeStale()
	newDir := filepath.Join(d.path, "new")
	entries, err := os.ReadDir(newDir)
	if err != nil {
		return 0, fmt.Errorf("maildrop: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	var bad []error
	n := 0
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return n, errors.Join(append(bad, err)...)
		}
		err := d.pickOne(ctx, s, name)
		switch {
		case errors.Is(err, ErrBadFile):
			bad = append(bad, err)
		case err != nil:
			return n, errors.Join(append(bad, err)...)
		default:
			n++
		}
	}
	return n, errors.Join(bad...)
}

func (d *Dir) pickOne(ctx context.Context, s Submitter, name string) error {
	path := filepath.Join(d.path, "new", name)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // picked up by a concurrent pass
	}
	if err != nil {
		return fmt.Errorf("maildrop: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	env, err := readHeader(br)
	if err != nil {
		f.Close()
		return d.moveToBad(name, err)
	}
	if err := s.Submit(ctx, Key(name), env, br); err != nil {
		if errors.Is(err, ErrRejected) {
			// Submitting it again would fail again and hold up every
			// file after it.
			f.Close()
			return d.moveToBad(name, err)
		}
		return fmt.Errorf("maildrop: submitting %s: %w", name, err)
	}
	f.Close()
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("maildrop: %w", err)
	}
	// Not syncing the directory here is safe: a removal lost in a crash
	// brings the file back, and it is submitted again under the same key.
	return nil
}

// moveToBad sets the file name aside in bad/ because of err.
func (d *Dir) moveToBad(name string, err error) error {
	if rerr := os.Rename(filepath.Join(d.path, "new", name), filepath.Join(d.path, "bad", name)); rerr != nil {
		return fmt.Errorf("maildrop: %s: %w (moving it to bad/: %v)", name, err, rerr)
	}
	return fmt.Errorf("%w: %s moved to bad/: %w", ErrBadFile, name, err)
}

// readHeader reads and checks the envelope line. The line may be longer
// than br's buffer (an envelope with many recipients), up to maxHeaderLine.
func readHeader(br *bufio.Reader) (Envelope, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > maxHeaderLine {
			return Envelope{}, errors.New("envelope line too long")
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return Envelope{}, fmt.Errorf("no envelope line: %w", err)
		}
	}
	var h fileHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return Envelope{}, fmt.Errorf("envelope: %w", err)
	}
	if h.Version != 1 {
		return Envelope{}, fmt.Errorf("unknown version %d", h.Version)
	}
	if err := h.check(); err != nil {
		return Envelope{}, err
	}
	return h.Envelope, nil
}

// check reports what would make env undeliverable as a maildrop file.
func (env *Envelope) check() error {
	if len(env.To) == 0 {
		return errors.New("no recipients")
	}
	for _, a := range append([]string{env.From, env.EnvID}, env.To...) {
		if strings.ContainsAny(a, "\r\n\x00") {
			return fmt.Errorf("bad address or ENVID %q", a)
		}
	}
	switch env.Ret {
	case "", "FULL", "HDRS":
	default:
		return fmt.Errorf("bad RET %q", env.Ret)
	}
	if env.Notify != "" && env.Notify != "NEVER" {
		for kw := range strings.SplitSeq(env.Notify, ",") {
			if kw != "SUCCESS" && kw != "FAILURE" && kw != "DELAY" {
				return fmt.Errorf("bad NOTIFY %q", env.Notify)
			}
		}
	}
	return nil
}

// removeStale removes files a crashed writer left in tmp/.
func (d *Dir) removeStale() {
	tmpDir := filepath.Join(d.path, "tmp")
	entries, err := os.ReadDir(tmpDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > staleTmp {
			os.Remove(filepath.Join(tmpDir, e.Name()))
		}
	}
}

// Run picks up files every interval (default one second) until ctx ends.
// Errors are logged and the next pass tries again.
func (d *Dir) Run(ctx context.Context, s Submitter, interval time.Duration, log *slog.Logger) error {
	if interval <= 0 {
		interval = time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := d.Pickup(ctx, s)
		if n > 0 {
			log.Info("maildrop: picked up", "messages", n)
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("maildrop: pickup", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func syncDir(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
