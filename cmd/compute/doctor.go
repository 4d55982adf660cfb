package main

import diag "github.com/computeplatform/compute/internal/doctor"

func runDoctor(e *env, path string, args []string) error {
	l := newLeaf(e, path, "", "Checks the installation and prints each check with ok, warn or fail and what to do:\n"+
		"schema version, notifications delivered end to end, what holds back vacuum, dead rows and\n"+
		"autovacuum of compute.jobs, running jobs past their lease, and queues with runnable jobs but\n"+
		"no worker seen. Exits 1 when a check fails; warnings leave the exit status 0.", true)
	if _, err := l.parse(args, 0, 0); err != nil {
		return err
	}
	q, err := l.open()
	if err != nil {
		return err
	}
	checks := diag.Run(e.ctx, q)
	if e.ctx.Err() != nil {
		return e.ctx.Err()
	}
	failed := false
	for i := range checks {
		checks[i].Detail = e.redact(checks[i].Detail)
		failed = failed || checks[i].Status == diag.Fail
	}
	if l.json() {
		if err := writeJSON(e.stdout, struct {
			OK     bool         `json:"ok"`
			Checks []diag.Check `json:"checks"`
		}{!failed, checks}); err != nil {
			return err
		}
	} else {
		rows := make([][]string, 0, len(checks))
		for _, c := range checks {
			rows = append(rows, []string{c.Status, c.Name, c.Detail})
			if c.Advice != "" {
				rows = append(rows, []string{"", "", "-> " + c.Advice})
			}
		}
		if err := table(e.stdout, []string{"STATUS", "CHECK", "DETAIL"}, rows); err != nil {
			return err
		}
	}
	if failed {
		return &exitError{exitFailure}
	}
	return nil
}
