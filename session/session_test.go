package session

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

const (
	secretA = "first-secret-first-secret-first-secret"
	secretB = "second-secret-second-secret-second-secret"
)

func TestCodecRoundTripAndRotation(t *testing.T) {
	old, _ := NewCodec(secretA)
	sealed := old.Seal("cookie", []byte("hello"))

	rotated, err := NewCodec(secretB, secretA)
	if err != nil {
		t.Fatal(err)
	}
	pt, wasOld, err := rotated.Open("cookie", sealed)
	if err != nil || string(pt) != "hello" || !wasOld {
		t.Fatalf("a value under the older secret: pt=%q rotated=%v err=%v", pt, wasOld, err)
	}
	fresh := rotated.Seal("cookie", []byte("hello"))
	if _, wasOld, err := rotated.Open("cookie", fresh); err != nil || wasOld {
		t.Fatalf("a value under the current secret: rotated=%v err=%v", wasOld, err)
	}
	if _, _, err := old.Open("cookie", fresh); !errors.Is(err, ErrInvalid) {
		t.Error("a codec without the new secret opened its value")
	}
}

func TestCodecRefusesBadValues(t *testing.T) {
	c, _ := NewCodec(secretA)
	other, _ := NewCodec(secretB)
	sealed := c.Seal("cookie", []byte("payload"))
	flipped := []byte(sealed)
	flipped[len(flipped)/2] ^= 0x01
	for name, v := range map[string]string{
		"tampered":        string(flipped),
		"truncated":       sealed[:len(sealed)-4],
		"empty":           "",
		"not base64":      "%%%",
		"foreign key":     other.Seal("cookie", []byte("payload")),
		"other purpose":   c.Seal("state", []byte("payload")),
		"unknown version": "Ag" + sealed[2:],
	} {
		if _, _, err := c.Open("cookie", v); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
}

func TestNewCodecRefusesShortSecrets(t *testing.T) {
	if _, err := NewCodec("short"); err == nil {
		t.Error("a 5-byte secret was accepted")
	}
	if _, err := NewCodec(secretA, "short"); err == nil || !strings.Contains(err.Error(), "#2") {
		t.Errorf("a short older secret: got %v, want an error naming #2", err)
	}
}

func TestChunkedCookies(t *testing.T) {
	for _, size := range []int{10, ChunkSize, ChunkSize + 1, 3*ChunkSize + 17} {
		value := strings.Repeat("v", size)
		w := httptest.NewRecorder()
		WriteChunked(w, httptest.NewRequest("GET", "/", nil), "s", value, CookieOptions{MaxAge: 60})
		resp := w.Result()
		r := httptest.NewRequest("GET", "/", nil)
		for _, c := range resp.Cookies() {
			if len(c.String()) >= 4096 {
				t.Errorf("size %d: cookie %s is %d bytes, over the browser limit", size, c.Name, len(c.String()))
			}
			if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" {
				t.Errorf("cookie %s lacks HttpOnly, SameSite=Lax or Path=/", c.Name)
			}
			r.AddCookie(c)
		}
		got, ok := ReadChunked(r, "s")
		if !ok || got != value {
			t.Errorf("size %d: read back %d bytes (ok=%v)", size, len(got), ok)
		}
	}
}

func TestShorterValueExpiresStaleChunks(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.AddCookie(&http.Cookie{Name: "s", Value: "3.a"})
	r.AddCookie(&http.Cookie{Name: "s_1", Value: "b"})
	r.AddCookie(&http.Cookie{Name: "s_2", Value: "c"})
	w := httptest.NewRecorder()
	WriteChunked(w, r, "s", "small", CookieOptions{})
	expired := map[string]bool{}
	for _, c := range w.Result().Cookies() {
		if c.MaxAge < 0 {
			expired[c.Name] = true
		}
	}
	if !expired["s_1"] || !expired["s_2"] || expired["s"] {
		t.Errorf("expired %v, want s_1 and s_2 only", expired)
	}
}

func TestMissingChunkIsNoSession(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.AddCookie(&http.Cookie{Name: "s", Value: "3.a"})
	r.AddCookie(&http.Cookie{Name: "s_1", Value: "b"})
	if _, ok := ReadChunked(r, "s"); ok {
		t.Error("a value with a missing chunk was read")
	}
}

func TestSessionLifetimes(t *testing.T) {
	now := time.Now()
	s := New(map[string]any{"sub": "u", "nonce": "n", "aud": "a", "email": "e"}, "idt", "at", "rt", now.Add(time.Minute), now.Add(-2*time.Hour))
	if _, ok := s.Claims["nonce"]; ok {
		t.Error("protocol claims are kept in the session")
	}
	if s.Expired(now, 3*time.Hour, 0) {
		t.Error("expired within its lifetime")
	}
	if !s.Expired(now, time.Hour, 0) {
		t.Error("not expired past its lifetime")
	}
	if !s.Expired(now, 3*time.Hour, time.Hour) {
		t.Error("not expired past its idle timeout")
	}
	b, _ := s.Marshal()
	back, err := Unmarshal(b)
	if err != nil || back.Subject() != "u" || back.RefreshToken != "rt" {
		t.Errorf("round trip: %+v %v", back, err)
	}
	if _, err := Unmarshal([]byte(`{}`)); err == nil {
		t.Error("an empty record was accepted")
	}
}
