package testdb

import (
	"net/url"
	"regexp"
	"strings"
)

const mask = "xxxxx"

var (
	// A URL of any scheme (postgres://, postgresql://, or a mistaken one).
	urlScheme = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://`)
	// password=... as a URL query parameter; the value ends at '&'.
	queryPassword = regexp.MustCompile(`(?i)([?&]password=)[^&]*`)
	// password=... in keyword/value form; the value is 'quoted' (with
	// backslash escapes, possibly unterminated) or runs to whitespace.
	keywordPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)`)
)

// redactConnString masks the password in a connection string, in URL form
// (postgres://user:password@host/db?password=..., or any other scheme) or in
// keyword/value form (host=h password=secret). It works on the raw text, not a parsed URL, so it
// also masks passwords in malformed URLs; for odd input it may mask more than
// the password, never less.
func redactConnString(s string) string {
	if !urlScheme.MatchString(s) {
		return keywordPassword.ReplaceAllString(s, "${1}"+mask)
	}
	// The user info is everything between "://" and the last '@' (a password
	// may contain unescaped '@', '/', '?'); the password starts after its first ':'.
	start := strings.Index(s, "://") + len("://")
	if at := strings.LastIndex(s[start:], "@"); at >= 0 {
		at += start
		if colon := strings.Index(s[start:at], ":"); colon >= 0 {
			colon += start
			s = s[:colon+1] + mask + s[at:]
		}
	}
	return queryPassword.ReplaceAllString(s, "${1}"+mask)
}

// scrubbedError hides known secrets (the DATABASE_URL passwords, raw and
// URL-encoded) in the message of the error it wraps.
type scrubbedError struct {
	err     error
	secrets []string
}

func (e *scrubbedError) Error() string {
	msg := e.err.Error()
	for _, secret := range e.secrets {
		encoded := strings.TrimPrefix(url.UserPassword("", secret).String(), ":")
		for _, form := range []string{secret, encoded, url.QueryEscape(secret), url.PathEscape(secret)} {
			if form != "" {
				msg = strings.ReplaceAll(msg, form, mask)
			}
		}
	}
	return msg
}

func (e *scrubbedError) Unwrap() error { return e.err }
