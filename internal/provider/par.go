package provider

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// FAPIMetadata is the part of the provider metadata that the FAPI 2.0
// building blocks read (RFC 9126, 9101, 9449, 8705 and JARM).
type FAPIMetadata struct {
	PushedAuthorizationRequestEndpoint     string   `json:"pushed_authorization_request_endpoint,omitempty"`
	RequirePushedAuthorizationRequests     bool     `json:"require_pushed_authorization_requests,omitempty"`
	RequestObjectSigningAlgValuesSupported []string `json:"request_object_signing_alg_values_supported,omitempty"`
	RequireSignedRequestObject             bool     `json:"require_signed_request_object,omitempty"`
	ResponseModesSupported                 []string `json:"response_modes_supported,omitempty"`
	AuthorizationSigningAlgValuesSupported []string `json:"authorization_signing_alg_values_supported,omitempty"`
	DPoPSigningAlgValuesSupported          []string `json:"dpop_signing_alg_values_supported,omitempty"`
	// MTLSEndpointAliases are the endpoints a client authenticating with
	// a certificate calls instead (RFC 8705 §5).
	MTLSEndpointAliases                   map[string]string `json:"mtls_endpoint_aliases,omitempty"`
	TLSClientCertificateBoundAccessTokens bool              `json:"tls_client_certificate_bound_access_tokens,omitempty"`
}

// maxPushedRequestLifetime bounds the expires_in a PAR endpoint may give:
// RFC 9126 §2.2 expects seconds to a few minutes, and the browser must
// reach the IdP within it.
const maxPushedRequestLifetime = time.Hour

// PushAuthorizationRequest sends an authorization request's parameters to
// the IdP's PAR endpoint (RFC 9126), authenticated as the client (and with
// a DPoP proof when the client has a DPoP key, which binds the code to it,
// RFC 9449 §10). It returns the request_uri the browser carries to the
// authorization endpoint and how long the IdP keeps it.
func (rp *RelyingParty) PushAuthorizationRequest(ctx context.Context, params url.Values) (requestURI string, expiresIn time.Duration, err error) {
	d, err := rp.p.Discovery(ctx)
	if err != nil {
		return "", 0, err
	}
	endpoint := rp.client.endpoint(d, "pushed_authorization_request_endpoint", d.PushedAuthorizationRequestEndpoint)
	if endpoint == "" {
		return "", 0, fmt.Errorf("the IdP announces no pushed_authorization_request_endpoint")
	}
	form := make(url.Values, len(params)+4)
	for k, v := range params {
		form[k] = append([]string(nil), v...)
	}
	resp, err := rp.p.post(ctx, d, endpoint, rp.client, form, true)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		e := &TokenError{Status: resp.StatusCode}
		_ = json.NewDecoder(resp.Body).Decode(e)
		return "", 0, fmt.Errorf("pushing the authorization request: %w", &endpointError{what: "pushed authorization request endpoint", err: e})
	}
	var pr struct {
		RequestURI string `json:"request_uri"`
		ExpiresIn  int64  `json:"expires_in"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&pr); err != nil {
		return "", 0, fmt.Errorf("decoding the pushed authorization response: %v: %w", err, ErrUnavailable)
	}
	if pr.RequestURI == "" || pr.ExpiresIn <= 0 {
		return "", 0, fmt.Errorf("the pushed authorization response lacks request_uri or expires_in: %w", ErrUnavailable)
	}
	return pr.RequestURI, min(time.Duration(pr.ExpiresIn)*time.Second, maxPushedRequestLifetime), nil
}

// endpointError names the endpoint in a TokenError's message: TokenError
// says "token endpoint", and its classification (ErrUnavailable,
// ErrInvalidGrant) is kept through Unwrap.
type endpointError struct {
	what string
	err  *TokenError
}

func (e *endpointError) Error() string {
	return strings.Replace(e.err.Error(), "token endpoint", e.what, 1)
}

func (e *endpointError) Unwrap() error { return e.err }

// AuthRequestOptions say how an authorization request reaches the IdP.
type AuthRequestOptions struct {
	// PAR pushes the request to the IdP (RFC 9126) and sends the browser
	// with client_id and request_uri only. The request is pushed anyway
	// when the IdP's discovery says require_pushed_authorization_requests.
	PAR bool
	// RequestObject signs the request with the client's private_key_jwt
	// key (RFC 9101), pushed or in the browser's URL. It is signed anyway
	// when the IdP's discovery says require_signed_request_object.
	RequestObject bool
}

// AuthorizationURL is where the browser goes to log in with params (the
// whole request: response_type, client_id, redirect_uri, state, nonce,
// PKCE...): the authorization endpoint with params in its query, or with
// a signed request object, or with the request_uri of a pushed request.
func (rp *RelyingParty) AuthorizationURL(ctx context.Context, params url.Values, o AuthRequestOptions) (string, error) {
	d, err := rp.p.Discovery(ctx)
	if err != nil {
		return "", err
	}
	query := params
	if o.RequestObject || d.RequireSignedRequestObject {
		signed, err := rp.SignRequestObject(ctx, params)
		if err != nil {
			return "", err
		}
		// RFC 9101 §5: the request object carries everything; client_id
		// outside it tells the IdP whose key verifies it.
		query = url.Values{"client_id": {rp.client.ID}, "request": {signed}}
	}
	if o.PAR || d.RequirePushedAuthorizationRequests {
		requestURI, _, err := rp.PushAuthorizationRequest(ctx, query)
		if err != nil {
			return "", err
		}
		query = url.Values{"client_id": {rp.client.ID}, "request_uri": {requestURI}}
	}
	target := d.AuthorizationEndpoint
	if strings.Contains(target, "?") {
		return target + "&" + query.Encode(), nil
	}
	return target + "?" + query.Encode(), nil
}
