package smtpclient

import (
	"context"
	"errors"
	"testing"
)

func TestSASLClients(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tok := func(context.Context) (string, error) { return "ya29.token", nil }
	tests := []struct {
		a    Auth
		mech string
		ir   string
	}{
		{Auth{Mechanism: AuthPlain, Username: "u", Password: "p"}, "PLAIN", "\x00u\x00p"},
		{Auth{Mechanism: AuthXOAUTH2, Username: "u@example.org", Token: tok}, "XOAUTH2", "user=u@example.org\x01auth=Bearer ya29.token\x01\x01"},
		{Auth{Mechanism: AuthOAuthBearer, Username: "u@example.org", Token: tok}, "OAUTHBEARER", "n,a=u@example.org,\x01host=smtp.example.org\x01port=587\x01auth=Bearer ya29.token\x01\x01"},
	}
	for _, tt := range tests {
		c, err := saslClient(ctx, &tt.a, "smtp.example.org:587")
		if err != nil {
			t.Fatal(err)
		}
		mech, ir, err := c.Start()
		if err != nil || mech != tt.mech || string(ir) != tt.ir {
			t.Errorf("%s: Start() = %q, %q, %v", tt.a.Mechanism, mech, ir, err)
		}
	}
	boom := errors.New("token endpoint down")
	_, err := saslClient(ctx, &Auth{Mechanism: AuthXOAUTH2, Username: "u", Token: func(context.Context) (string, error) { return "", boom }}, "h:1")
	if !errors.Is(err, boom) {
		t.Fatalf("token error: %v", err)
	}
	_, err = saslClient(ctx, &Auth{Mechanism: AuthXOAUTH2, Username: "u", Token: func(context.Context) (string, error) { return "a\r\nQUIT", nil }}, "h:1")
	if err == nil {
		t.Fatal("token with CRLF accepted")
	}
}
