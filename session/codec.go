package session

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// MinSecretLen is the shortest session_secret accepted, in bytes.
const MinSecretLen = 32

const formatV1 = 0x01

// ErrInvalid means a sealed value could not be opened: tampered, truncated,
// sealed by a key this codec does not hold, or sealed for another purpose.
var ErrInvalid = errors.New("invalid sealed value")

// Codec seals and opens values with XChaCha20-Poly1305 (192-bit random
// nonces, so random nonces never realistically collide). Keys are derived
// with HKDF-SHA256 from the configured secrets: the first seals, all open,
// which is how a secret is rotated without logging anyone out.
type Codec struct {
	aeads []cipher.AEAD
}

// NewCodec derives one key per secret; secrets[0] is the current one.
func NewCodec(secrets ...string) (*Codec, error) {
	if len(secrets) == 0 {
		return nil, fmt.Errorf("no session secret")
	}
	c := &Codec{}
	for i, s := range secrets {
		if len(s) < MinSecretLen {
			return nil, fmt.Errorf("session secret #%d is %d bytes, want at least %d", i+1, len(s), MinSecretLen)
		}
		key, err := DeriveKey(s, "caddy-oidc cookie v1")
		if err != nil {
			return nil, err
		}
		aead, err := chacha20poly1305.NewX(key)
		if err != nil {
			return nil, err
		}
		c.aeads = append(c.aeads, aead)
	}
	return c, nil
}

// DeriveKey derives a 32-byte key for one purpose from a session secret.
func DeriveKey(secret, purpose string) ([]byte, error) {
	return hkdf.Key(sha256.New, []byte(secret), []byte("caddy-oidc"), purpose, 32)
}

// Seal encrypts plaintext; purpose is authenticated (not encrypted) so a
// value sealed as one cookie cannot be replayed as another.
func (c *Codec) Seal(purpose string, plaintext []byte) string {
	aead := c.aeads[0]
	ns := aead.NonceSize()
	buf := make([]byte, 1+ns, 1+ns+len(plaintext)+aead.Overhead())
	buf[0] = formatV1
	rand.Read(buf[1 : 1+ns])
	buf = aead.Seal(buf, buf[1:1+ns], plaintext, []byte(purpose)) //nolint:gosec // G407: the nonce was just filled by crypto/rand
	return base64.RawURLEncoding.EncodeToString(buf)
}

// Open decrypts a value made by Seal. rotated is true when an older secret
// opened it, so the caller re-seals it under the current one.
func (c *Codec) Open(purpose, sealed string) (plaintext []byte, rotated bool, err error) {
	raw, err := base64.RawURLEncoding.DecodeString(sealed)
	if err != nil {
		return nil, false, ErrInvalid
	}
	ns := c.aeads[0].NonceSize()
	if len(raw) < 1+ns+c.aeads[0].Overhead() || raw[0] != formatV1 {
		return nil, false, ErrInvalid
	}
	nonce, ct := raw[1:1+ns], raw[1+ns:]
	for i, aead := range c.aeads {
		if pt, err := aead.Open(ct[:0:0], nonce, ct, []byte(purpose)); err == nil {
			return pt, i > 0, nil
		}
	}
	return nil, false, ErrInvalid
}
