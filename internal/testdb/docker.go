package testdb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

const dockerImage = "postgres:15"

// dockerAvailable reports (as nil) whether a Docker engine answers within 3s.
// The docker client alone is not enough: `docker info` fails or hangs when
// no engine runs.
func dockerAvailable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err := docker(ctx, "info", "--format", "{{.ServerVersion}}")
	return err
}

// startDocker runs a throwaway postgres:15 container with the port published
// on 127.0.0.1 and waits until it accepts connections.
func startDocker(ctx context.Context, logf func(string, ...any)) (*Server, error) {
	began := time.Now()
	name := tempPrefix + randomHex(6)
	args := []string{"run", "-d", "--rm", "--name", name,
		"--label", "compute-testdb.owner-pid=" + strconv.Itoa(os.Getpid()),
		"-e", "POSTGRES_HOST_AUTH_METHOD=trust",
		"-p", "127.0.0.1::5432",
		"--shm-size", "256m", // the default 64MB is tight for parallel queries
		dockerImage}
	for _, setting := range serverSettings {
		args = append(args, "-c", setting)
	}
	logf("testdb: starting Docker container %s (%s)", name, dockerImage)
	runCtx, cancel := context.WithTimeout(ctx, 10*time.Minute) // may pull the image
	out, err := docker(runCtx, args...)
	cancel()
	if err != nil {
		return nil, err
	}
	fields := strings.Fields(string(out))
	if len(fields) == 0 {
		return nil, errors.New("testdb: docker run printed no container id")
	}
	s := &Server{kind: kindDocker, logf: logf, containerID: fields[len(fields)-1]}
	started := false
	defer func() {
		if !started {
			if err := s.Close(); err != nil {
				logf("testdb: cleaning up after failed start: %v", err)
			}
		}
	}()

	portCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	out, err = docker(portCtx, "port", s.containerID, "5432/tcp")
	cancel()
	if err != nil {
		return nil, err
	}
	if s.port, err = parseDockerPort(string(out)); err != nil {
		return nil, err
	}
	s.base = ownedURL(s.port)
	s.adminURL = s.ConnString("postgres")

	// The image runs initdb and a socket-only temporary server first, so
	// allow more time than for a local server.
	if err := waitReady(ctx, s.adminURL, time.Now().Add(2*readyTimeout), nil); err != nil {
		return nil, fmt.Errorf("testdb: Docker container %s: %w", name, err)
	}
	started = true
	logf("testdb: PostgreSQL ready in container %s on 127.0.0.1:%d after %v", name, s.port, time.Since(began).Round(time.Millisecond))
	return s, nil
}

// parseDockerPort reads the host port from `docker port` output such as
// "127.0.0.1:49153" (one line per published address).
func parseDockerPort(out string) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if _, port, err := net.SplitHostPort(strings.TrimSpace(line)); err == nil {
			if n, err := strconv.Atoi(port); err == nil {
				return n, nil
			}
		}
	}
	return 0, fmt.Errorf("testdb: cannot parse `docker port` output %q", out)
}

// closeDocker stops the container (--rm then removes it), falling back to
// docker rm -f. The caller holds s.mu.
func (s *Server) closeDocker() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := docker(ctx, "stop", "-t", "5", s.containerID)
	if err == nil {
		return nil
	}
	if _, rmErr := docker(ctx, "rm", "-f", s.containerID); rmErr != nil {
		return errors.Join(err, rmErr)
	}
	return nil
}

// docker runs the docker client and returns its stdout.
func docker(ctx context.Context, args ...string) ([]byte, error) {
	path, err := exec.LookPath("docker")
	if err != nil {
		return nil, fmt.Errorf("testdb: docker client not found: %w", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second // don't wait on pipes held by stray children
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil, fmt.Errorf("testdb: docker %s: %w: %s", args[0], err, lastLines(strings.TrimSpace(stderr.String()), 5))
	}
	return stdout.Bytes(), nil
}
