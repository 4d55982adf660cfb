package dashboard

import "time"

// SetMaxLive sets the cap on live feeds for a test and returns a function
// that puts it back.
func SetMaxLive(n int) (restore func()) {
	old := maxLive
	maxLive = n
	return func() { maxLive = old }
}

// SetPageTimeout sets how long a page may take for a test and returns a
// function that puts it back.
func SetPageTimeout(d time.Duration) (restore func()) {
	old := pageTimeout
	pageTimeout = d
	return func() { pageTimeout = old }
}
