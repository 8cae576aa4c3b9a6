package smtptest_test

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/internal/smtptest"
)

// A server that rejects one recipient temporarily, and a client that sees it.
func ExampleNew() {
	s, err := smtptest.New(nil)
	if err != nil {
		panic(err)
	}
	if err := s.Start(); err != nil {
		panic(err)
	}
	defer s.Stop()
	s.SetRcptFault("busy@example.net", smtptest.Reply(451, smtp.EnhancedCode{4, 3, 0}, "try again later"))

	c, err := smtp.Dial(s.Addr())
	if err != nil {
		panic(err)
	}
	defer c.Close()
	c.Mail("sender@example.org", nil)
	fmt.Println(c.Rcpt("busy@example.net", nil))
	c.Rcpt("ok@example.net", nil)
	w, _ := c.Data()
	io.WriteString(w, "Subject: test\r\n\r\nhello\r\n")
	w.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msgs, _ := s.WaitMessages(ctx, 1)
	fmt.Println(msgs[0].Rcpts[0].Addr, msgs[0].Size)
	// Output:
	// SMTP error 451: try again later
	// ok@example.net 24
}
