package caddyoidc

import (
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The response_mode values: query (the default, a redirect) and form_post
// (OAuth 2.0 Form Post Response Mode: the IdP's page POSTs the response to
// the callback).
const (
	responseModeQuery    = "query"
	responseModeFormPost = "form_post"
	// JARM (JWT Secured Authorization Response Mode): the response is one
	// JWT signed by the IdP, in the query (jwt means query.jwt for the
	// code flow) or posted.
	responseModeJWT         = "jwt"
	responseModeQueryJWT    = "query.jwt"
	responseModeFormPostJWT = "form_post.jwt"
)

// postedResponse reports whether the response mode has the IdP POST the
// response to the callback.
func postedResponse(mode string) bool {
	return mode == responseModeFormPost || mode == responseModeFormPostJWT
}

// signedResponse reports a JARM response mode.
func signedResponse(mode string) bool {
	return mode == responseModeJWT || mode == responseModeQueryJWT || mode == responseModeFormPostJWT
}

// maxCallbackBody bounds a form_post callback's body: a code, a state and
// a few short parameters.
const maxCallbackBody = 16 << 10

// repostField marks the callback's own re-post of a form_post response, so
// that a response whose attempt cookie is still missing is refused rather
// than posted again.
const repostField = "oidc_repost"

// callbackResponseParams are the authorization response parameters a
// re-post carries (RFC 6749 §4.1.2, RFC 9207, OpenID Connect Session
// Management): nothing else of a body anyone can send is echoed.
var callbackResponseParams = []string{"code", "state", "iss", "error", "error_description", "error_uri", "session_state", "response"}

// callbackParams reads the authorization response: from the query of a GET,
// or with response_mode form_post from the body of a POST, never both
// ways on one route.
func (h *Handler) callbackParams(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	if !postedResponse(h.Login.ResponseMode) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			return nil, caddyhttp.Error(http.StatusMethodNotAllowed, errors.New("callback: method not allowed (response_mode query answers by GET)"))
		}
		q := r.URL.Query()
		redactCode(r, q)
		return q, nil
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return nil, caddyhttp.Error(http.StatusMethodNotAllowed, errors.New("callback: method not allowed (response_mode form_post answers by POST)"))
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		return nil, caddyhttp.Error(http.StatusUnsupportedMediaType, fmt.Errorf("callback: form_post body of type %q, want application/x-www-form-urlencoded", mt))
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxCallbackBody)
	if err := r.ParseForm(); err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return nil, caddyhttp.Error(http.StatusRequestEntityTooLarge, errors.New("callback: form_post body too large"))
		}
		return nil, caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("callback: reading the form_post body: %w", err))
	}
	return r.PostForm, nil
}

// repostCallback answers a form_post response that came without its
// attempt cookie: the IdP's page posts cross-site, and browsers leave
// SameSite=Lax cookies off a cross-site POST. A page of this origin posts
// the same response again, same-site, so the cookie goes with it. This
// works over plain http as well, and no login cookie has to be SameSite=None
// (which would ride along on every cross-site request). The state must
// still match a cookie of this browser: a response planted from another
// site finds none and is refused (400) on the re-post.
func (h *Handler) repostCallback(w http.ResponseWriter, q url.Values) error {
	fields := make([]formField, 0, len(callbackResponseParams)+1)
	for _, name := range callbackResponseParams {
		if v, ok := q[name]; ok && len(v) == 1 {
			fields = append(fields, formField{name, v[0]})
		}
	}
	fields = append(fields, formField{repostField, "1"})
	return writeAutoSubmit(w, h.callbackPath, fields, "Continue to finish logging in.")
}
