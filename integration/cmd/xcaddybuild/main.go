// Command xcaddybuild builds Caddy with the plugin through xcaddy's Builder,
// from the recipe in xcaddy.json (the JSON form of xcaddy.Builder). Local
// replacement paths are taken relative to the recipe's folder.
//
//	go run ./cmd/xcaddybuild -recipe ../xcaddy.json -o ../bin/caddy-xcaddy
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/caddyserver/xcaddy"
)

func main() {
	recipe := flag.String("recipe", "xcaddy.json", "path to the build recipe")
	out := flag.String("o", "caddy", "output binary")
	flag.Parse()

	raw, err := os.ReadFile(*recipe)
	if err != nil {
		log.Fatal(err)
	}
	var b xcaddy.Builder
	if err := json.Unmarshal(raw, &b); err != nil {
		log.Fatalf("%s: %v", *recipe, err)
	}
	base, err := filepath.Abs(filepath.Dir(*recipe))
	if err != nil {
		log.Fatal(err)
	}
	for i, r := range b.Replacements {
		n := string(r.New)
		if strings.HasPrefix(n, ".") || strings.HasPrefix(n, "/") {
			if !filepath.IsAbs(n) {
				n = filepath.Join(base, n)
			}
			b.Replacements[i].New = xcaddy.ReplacementPath(n)
		}
	}
	if err := b.Build(context.Background(), *out); err != nil {
		log.Fatal(err)
	}
}
