package smtpclient

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/emersion/go-sasl"
)

// saslClient builds the SASL client for a relay's credentials. OAuth tokens
// are fetched here, once per new connection, so that they can be refreshed.
func saslClient(ctx context.Context, a *Auth, addr string) (sasl.Client, error) {
	switch a.Mechanism {
	case AuthPlain:
		return sasl.NewPlainClient(a.Identity, a.Username, a.Password), nil
	case AuthLogin:
		return sasl.NewLoginClient(a.Username, a.Password), nil
	case AuthXOAUTH2, AuthOAuthBearer:
		tok, err := a.Token(ctx)
		if err != nil {
			return nil, fmt.Errorf("smtpclient: OAuth token: %w", err)
		}
		if strings.ContainsAny(tok, "\x00\x01\r\n") || strings.ContainsAny(a.Username, "\x00\x01\r\n,=") {
			return nil, fmt.Errorf("smtpclient: OAuth token or user name has a control character")
		}
		if a.Mechanism == AuthXOAUTH2 {
			return &xoauth2Client{user: a.Username, token: tok}, nil
		}
		host, portStr, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(portStr)
		return &oauthBearerClient{Client: sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: a.Username, Token: tok, Host: host, Port: port})}, nil
	}
	return nil, fmt.Errorf("smtpclient: unknown AUTH mechanism %q", a.Mechanism)
}

// xoauth2Client is the XOAUTH2 mechanism of Google and Microsoft: an initial
// response "user=U^Aauth=Bearer T^A^A". On failure the server sends a JSON
// challenge, answered with an empty response so it can send the final 535.
type xoauth2Client struct {
	user, token string
	failed      bool
}

func (x *xoauth2Client) Start() (string, []byte, error) {
	return string(AuthXOAUTH2), []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

func (x *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	if x.failed {
		return nil, sasl.ErrUnexpectedServerChallenge
	}
	x.failed = true
	return []byte{}, nil
}

// oauthBearerClient is go-sasl's OAUTHBEARER client, answering the
// server's error challenge with the %x01 response RFC 7628 §3.2.3 asks for,
// so that the server ends the exchange with its own reply (535 5.7.8 or
// similar) instead of the client cancelling it.
type oauthBearerClient struct {
	sasl.Client
	failed bool
}

func (o *oauthBearerClient) Next(challenge []byte) ([]byte, error) {
	if o.failed {
		return nil, sasl.ErrUnexpectedServerChallenge
	}
	o.failed = true
	return []byte{0x01}, nil
}
