// Package peers starts real mail servers from Debian packages for a test:
// Postfix relay instances and Postfix's smtp-sink. Each listens on a free
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
// Instances are safe to use from the test's goroutines; Stop and Start are
// meant to be called from the test goroutine. Every helper takes a
// testing.TB and fails the test on error, so benchmarks can use them too.
package peers
