// Command vulncheck runs govulncheck (JSON output) on a module and decides
// what fails `make lint`: a vulnerable function of a required module that the
// code calls fails, because this project fixes it by requiring a fixed
// version. The standard library is a different matter: it is whatever Go the
// builder uses (an xcaddy user's toolchain, not this module's go.mod), so
// called standard-library vulnerabilities are listed with the Go release
// that fixes them and fail only with -stdlib fail. Vulnerabilities in code
// that is imported or required but never called are counted, as govulncheck
// itself does not fail on them.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
)

func main() {
	bin := flag.String("govulncheck", "govulncheck", "the govulncheck binary")
	db := flag.String("db", "", "vulnerability database URL (govulncheck -db); empty for vuln.go.dev")
	dir := flag.String("C", ".", "module directory")
	stdlib := flag.String("stdlib", "warn", "called standard-library vulnerabilities: warn or fail")
	flag.Parse()
	if *stdlib != "warn" && *stdlib != "fail" {
		fmt.Fprintln(os.Stderr, "vulncheck: -stdlib must be warn or fail")
		os.Exit(2)
	}
	args := []string{"-C", *dir, "-format", "json"}
	if *db != "" {
		args = append(args, "-db", *db)
	}
	patterns := flag.Args()
	if len(patterns) == 0 {
		patterns = []string{"./..."}
	}
	var out bytes.Buffer
	cmd := exec.Command(*bin, append(args, patterns...)...)
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	// In JSON mode govulncheck exits 0 whatever it finds: non-zero is an
	// error (no database, packages that do not load).
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "vulncheck: govulncheck in %s: %v\n", *dir, err)
		os.Exit(2)
	}
	r, err := read(&out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vulncheck: reading govulncheck output: %v\n", err)
		os.Exit(2)
	}
	var b strings.Builder
	ok := r.report(&b, *dir, *stdlib == "fail")
	fmt.Print(b.String())
	if !ok {
		os.Exit(1)
	}
}

// The parts of govulncheck's JSON stream (golang.org/x/vuln/internal/govulncheck)
// this reads: one object per message.
type message struct {
	Config *struct {
		DB          string `json:"db"`
		GoVersion   string `json:"go_version"`
		ScanLevel   string `json:"scan_level"`
		ScannerVers string `json:"scanner_version"`
	} `json:"config"`
	OSV *struct {
		ID      string `json:"id"`
		Summary string `json:"summary"`
	} `json:"osv"`
	Finding *struct {
		OSV          string  `json:"osv"`
		FixedVersion string  `json:"fixed_version"`
		Trace        []frame `json:"trace"`
	} `json:"finding"`
}

type frame struct {
	Module   string `json:"module"`
	Version  string `json:"version"`
	Package  string `json:"package"`
	Function string `json:"function"`
	Receiver string `json:"receiver"`
	Position *struct {
		Filename string `json:"filename"`
		Line     int    `json:"line"`
	} `json:"position"`
}

// level orders how close the code comes to a vulnerability.
type level int

const (
	required level = iota // the module is in the build list
	imported              // a vulnerable package is imported
	called                // a vulnerable function is reachable
)

type vuln struct {
	id, summary     string
	module, version string
	fixed           string
	level           level
	example         string // for called: the code's call into the vulnerable symbol
}

type result struct {
	goVersion, db string
	vulns         map[string]*vuln
}

func read(in io.Reader) (*result, error) {
	r := &result{vulns: map[string]*vuln{}}
	summaries := map[string]string{}
	dec := json.NewDecoder(in)
	for {
		var m message
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return nil, err
		}
		switch {
		case m.Config != nil:
			r.goVersion, r.db = m.Config.GoVersion, m.Config.DB
		case m.OSV != nil:
			summaries[m.OSV.ID] = m.OSV.Summary
		case m.Finding != nil && len(m.Finding.Trace) > 0:
			f := m.Finding
			top := f.Trace[0]
			lv := required
			if top.Function != "" {
				lv = called
			} else if top.Package != "" {
				lv = imported
			}
			v := r.vulns[f.OSV]
			if v == nil {
				v = &vuln{id: f.OSV, module: top.Module, version: top.Version, fixed: f.FixedVersion, level: lv}
				r.vulns[f.OSV] = v
			}
			if lv > v.level {
				v.level = lv
			}
			if lv == called && v.example == "" {
				v.example = example(f.Trace)
			}
		}
	}
	for id, v := range r.vulns {
		v.summary = summaries[id]
	}
	return r, nil
}

// example names the outermost frame (the scanned code) and the vulnerable
// symbol it reaches.
func example(trace []frame) string {
	name := func(f frame) string {
		s := f.Package + "."
		if f.Receiver != "" {
			s += strings.TrimPrefix(f.Receiver, "*") + "."
		}
		return s + f.Function
	}
	entry := trace[len(trace)-1]
	at := ""
	if entry.Position != nil {
		at = fmt.Sprintf(" (%s:%d)", entry.Position.Filename, entry.Position.Line)
	}
	return fmt.Sprintf("%s reached from %s%s", name(trace[0]), name(entry), at)
}

// report prints the findings and says whether the module passes.
func (r *result) report(w *strings.Builder, dir string, stdlibFails bool) bool {
	var mods, std []*vuln
	uncalled := 0
	for _, v := range r.vulns {
		switch {
		case v.level != called:
			uncalled++
		case v.module == "stdlib":
			std = append(std, v)
		default:
			mods = append(mods, v)
		}
	}
	byID := func(vs []*vuln) {
		sort.Slice(vs, func(i, j int) bool { return vs[i].id < vs[j].id })
	}
	byID(mods)
	byID(std)
	line := func(v *vuln) {
		fmt.Fprintf(w, "  %s %s@%s, fixed in %s: %s\n      %s\n", v.id, v.module, v.version, v.fixed, v.summary, v.example)
	}
	fmt.Fprintf(w, "govulncheck %s (%s, database %s)\n", dir, r.goVersion, r.db)
	if len(mods) > 0 {
		fmt.Fprintf(w, "%d called vulnerabilities in required modules (require the fixed version):\n", len(mods))
		for _, v := range mods {
			line(v)
		}
	}
	if len(std) > 0 {
		newest := ""
		for _, v := range std {
			if newest == "" || versionLess(newest, v.fixed) {
				newest = v.fixed
			}
		}
		fmt.Fprintf(w, "%d called vulnerabilities in the standard library of %s (build with go%s or later):\n",
			len(std), r.goVersion, strings.TrimPrefix(newest, "v"))
		for _, v := range std {
			line(v)
		}
		if !stdlibFails {
			fmt.Fprintln(w, "  (not failing: the standard library is the builder's toolchain; -stdlib fail makes it fail)")
		}
	}
	fmt.Fprintf(w, "%d more in code that is required or imported but not called\n", uncalled)
	return len(mods) == 0 && (len(std) == 0 || !stdlibFails)
}

// versionLess compares govulncheck's fixed versions (v1.26.9, v0.58.1-...)
// by their numeric release parts, which is all a standard-library fix has.
func versionLess(a, b string) bool {
	release := func(v string) []string {
		v, _, _ = strings.Cut(strings.TrimPrefix(v, "v"), "-")
		return strings.Split(v, ".")
	}
	pa, pb := release(a), release(b)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		x, _ := strconv.Atoi(pa[i]) // not a number: 0, as for a missing part
		y, _ := strconv.Atoi(pb[i])
		if x != y {
			return x < y
		}
	}
	return len(pa) < len(pb)
}
