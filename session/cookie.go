package session

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ChunkSize is the most value bytes put in one cookie: with name and
// attributes every cookie stays under the 4096 bytes browsers keep.
const ChunkSize = 3800

// MaxChunks bounds how many cookies one session may span when read back,
// about 30 KB in all.
const MaxChunks = 8

// MaxWriteChunks bounds how many cookies a session is written to: beyond
// about 15 KB a Cookie header trips common proxies' 16 KB limits, so larger
// values are refused by WriteChunked (the caller keeps them server-side).
// It is below MaxChunks, so whatever is written can always be read.
const MaxWriteChunks = 4

// CookieOptions are the attributes every cookie of the module gets.
type CookieOptions struct {
	Secure bool
	// MaxAge in seconds; 0 makes a browser-session cookie.
	MaxAge int
	// SameSite of the cookie. Default (zero): Lax.
	SameSite http.SameSite
}

// ChunkName is the name of the i-th chunk of a value stored under name.
func ChunkName(name string, i int) string {
	if i == 0 {
		return name
	}
	return name + "_" + strconv.Itoa(i)
}

// ReadChunked reassembles a value written by WriteChunked. The first cookie
// carries the chunk count ("3.<chunk>") when there is more than one.
func ReadChunked(r *http.Request, name string) (string, bool) {
	v, ok := CookieValue(r, name)
	if !ok || v == "" {
		return "", false
	}
	dot := strings.IndexByte(v, '.')
	if dot < 0 {
		return v, true
	}
	n, err := strconv.Atoi(v[:dot])
	if err != nil || n < 2 || n > MaxChunks {
		return "", false
	}
	var parts [MaxChunks]string
	parts[0] = v[dot+1:]
	size := len(parts[0])
	for i := 1; i < n; i++ {
		c, ok := CookieValue(r, ChunkName(name, i))
		if !ok {
			return "", false
		}
		parts[i], size = c, size+len(c)
	}
	var b strings.Builder
	b.Grow(size)
	for _, p := range parts[:n] {
		b.WriteString(p)
	}
	return b.String(), true
}

// CookieValue finds a cookie by name in the request's Cookie headers
// without parsing the others: the hot path reads a few KB of cookies on
// every request. The value is not validated here; the AEAD does that.
func CookieValue(r *http.Request, name string) (string, bool) {
	for _, line := range r.Header["Cookie"] {
		for len(line) > 0 {
			part := line
			if i := strings.IndexByte(line, ';'); i >= 0 {
				part, line = line[:i], line[i+1:]
			} else {
				line = ""
			}
			part = strings.TrimSpace(part)
			if len(part) > len(name) && part[len(name)] == '=' && part[:len(name)] == name {
				v := part[len(name)+1:]
				if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
					v = v[1 : len(v)-1]
				}
				return v, true
			}
		}
	}
	return "", false
}

// Fits reports whether a value of n bytes can be written by WriteChunked.
func Fits(n int) bool { return (n+ChunkSize-1)/ChunkSize <= MaxWriteChunks }

// WriteChunked sets value under name, split over as many cookies as it
// needs, and expires chunks of an older, longer value still in r. A value
// too large for MaxWriteChunks cookies is not written: it reports false.
func WriteChunked(w http.ResponseWriter, r *http.Request, name, value string, o CookieOptions) bool {
	n := (len(value) + ChunkSize - 1) / ChunkSize
	if n > MaxWriteChunks {
		return false
	}
	for i := 0; i < n; i++ {
		part := value[i*ChunkSize : min((i+1)*ChunkSize, len(value))]
		if i == 0 && n > 1 {
			part = strconv.Itoa(n) + "." + part
		}
		http.SetCookie(w, cookie(ChunkName(name, i), part, o))
	}
	for i := max(n, 1); i < MaxChunks; i++ {
		if _, err := r.Cookie(ChunkName(name, i)); err == nil {
			http.SetCookie(w, expired(ChunkName(name, i), o.Secure))
		}
	}
	return true
}

// ClearChunked expires every chunk of name present in r. The deletion
// carries o's SameSite: a browser ignores a Lax deletion of a None cookie
// inside a cross-site frame (front-channel logout).
func ClearChunked(w http.ResponseWriter, r *http.Request, name string, o CookieOptions) {
	for i := 0; i < MaxChunks; i++ {
		if _, err := r.Cookie(ChunkName(name, i)); err == nil {
			c := expired(ChunkName(name, i), o.Secure)
			if o.SameSite != 0 {
				c.SameSite = o.SameSite
			}
			http.SetCookie(w, c)
		}
	}
}

// Cookie builds one cookie with the module's attributes: Path=/ and no
// Domain (so the __Host- prefix is valid), HttpOnly, SameSite=Lax.
func cookie(name, value string, o CookieOptions) *http.Cookie {
	c := &http.Cookie{
		Name:     name,
		Value:    value,
		Path:     "/",
		HttpOnly: true,
		Secure:   o.Secure,
		SameSite: http.SameSiteLaxMode,
	}
	if o.SameSite != 0 {
		c.SameSite = o.SameSite
	}
	if o.MaxAge > 0 {
		c.MaxAge = o.MaxAge
		c.Expires = time.Now().Add(time.Duration(o.MaxAge) * time.Second)
	}
	return c
}

// SetCookie sets one unchunked cookie with the module's attributes.
func SetCookie(w http.ResponseWriter, name, value string, o CookieOptions) {
	http.SetCookie(w, cookie(name, value, o))
}

// Expire deletes one cookie.
func Expire(w http.ResponseWriter, name string, secure bool) {
	http.SetCookie(w, expired(name, secure))
}

func expired(name string, secure bool) *http.Cookie {
	return &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: secure, SameSite: http.SameSiteLaxMode}
}
