// Package faulttest holds the fault-injection tests: they run the worker of
// examples/worker as real processes against a private PostgreSQL server and
// kill, pause, crash and cut them, then check that every job ended as asked
// and no stale holder wrote a result. Each test logs a line starting with
// FIGURES; FAULTTEST_LOGS=1 prints the workers' logs of passing tests too.
//
// This file holds the TCP proxy the tests put between workers and the
// server to cut and blackhole connections.
package faulttest

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards TCP connections from a local port to a target address. It
// can cut every connection at once, and blackhole them: data stops flowing
// while both sockets stay open, as through a dead NAT entry or a partition,
// so the peers notice only through their own timeouts. It is safe for
// concurrent use.
type Proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup // the accept loop and every link's goroutines

	// mu guards the fields below; the accept loop, the links and the
	// callers of CutAll, Blackhole and Close all take it.
	mu        sync.Mutex
	blackhole bool
	closed    bool
	links     map[*link]struct{}
}

// link is one client connection and, unless it was accepted during a
// blackhole, its connection to the target.
type link struct {
	client, server net.Conn // server is nil for a link born dead
	// dead is set when a blackhole starts (or the link was born in one)
	// and never cleared: a blackholed connection stays half-open, as it
	// would after a real partition, until a peer gives up on it.
	dead      atomic.Bool
	closeOnce sync.Once
}

func (l *link) close() {
	l.closeOnce.Do(func() {
		l.client.Close()
		if l.server != nil {
			l.server.Close()
		}
	})
}

// NewProxy listens on a free port of 127.0.0.1 and forwards to target
// ("host:port"). Close stops it.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, links: make(map[*link]struct{})}
	p.wg.Go(p.accept)
	return p, nil
}

// Port returns the port the proxy listens on.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// CutAll closes every open connection (new ones are still accepted) and
// returns how many it closed.
func (p *Proxy) CutAll() int {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.close()
	}
	return len(links)
}

// Blackhole turns the blackhole on or off. While it is on, every open
// connection and every new one silently drops what it receives; connections
// blackholed once stay so, and only connections made after it is turned off
// carry data again.
func (p *Proxy) Blackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blackhole = on
	if on {
		for l := range p.links {
			l.dead.Store(true)
		}
	}
}

// Close stops accepting, closes every connection and waits for the proxy's
// goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.CutAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

// serve connects one client to the target and copies both ways until
// either side closes.
func (p *Proxy) serve(c net.Conn) {
	l := &link{client: c}
	p.mu.Lock()
	born := p.blackhole
	p.mu.Unlock()
	if !born {
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			return
		}
		l.server = s
	}
	l.dead.Store(born)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.close()
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.links, l)
		p.mu.Unlock()
		l.close()
	}()
	if l.server == nil {
		p.pump(l, c, nil)
		return
	}
	var both sync.WaitGroup
	both.Go(func() { p.pump(l, c, l.server) })
	p.pump(l, l.server, c)
	both.Wait()
}

// pump copies from src to dst until src fails, dropping what it reads while
// the link is dead, then closes the link so the other direction ends too.
func (p *Proxy) pump(l *link, src, dst net.Conn) {
	defer l.close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !l.dead.Load() && dst != nil {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF, reset or closed: the peer is gone either way
		}
	}
}
