package interop

import (
	"html/template"
	"net/http"
	"net/url"
	"slices"
)

// hydraApp is the login, consent and logout app that Hydra delegates its
// screens to: it checks a password, asks for consent (remembered), puts
// the user's claims into the ID token by the scopes granted, and confirms
// a logout. It talks to Hydra's admin API as a real one would.
type hydraApp struct {
	admin string
	users []HydraUser
}

// scopeClaims are the claims each scope releases, as oidc-provider's
// default configuration in this suite does.
var scopeClaims = map[string][]string{
	"email":   {"email", "email_verified"},
	"profile": {"name", "given_name", "family_name", "preferred_username", "groups"},
}

var hydraPage = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{.Title}}</title></head><body>
<h1>{{.Title}}</h1>
{{if .Error}}<p id="error">{{.Error}}</p>{{end}}
{{if eq .Kind "login"}}
<form method="post" action="/login">
  <input type="hidden" name="challenge" value="{{.Challenge}}">
  <label>Username <input id="username" name="username" autofocus></label>
  <label>Password <input id="password" name="password" type="password"></label>
  <button id="sign-in" type="submit">Sign in</button>
</form>
{{else if eq .Kind "consent"}}
<p>{{.Client}} asks for: {{range .Scopes}}<code>{{.}}</code> {{end}}</p>
<form method="post" action="/consent">
  <input type="hidden" name="challenge" value="{{.Challenge}}">
  <button id="accept" type="submit">Allow</button>
</form>
{{else if eq .Kind "logout"}}
<form method="post" action="/logout">
  <input type="hidden" name="challenge" value="{{.Challenge}}">
  <button id="logout-yes" type="submit">Yes, sign me out</button>
</form>
{{end}}
</body></html>`))

type pageData struct {
	Title, Kind, Challenge, Error, Client string
	Scopes                                []string
}

func (a *hydraApp) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login", a.loginForm)
	mux.HandleFunc("POST /login", a.login)
	mux.HandleFunc("GET /consent", a.consentForm)
	mux.HandleFunc("POST /consent", a.consent)
	mux.HandleFunc("GET /logout", a.logoutForm)
	mux.HandleFunc("POST /logout", a.logout)
	mux.HandleFunc("GET /loggedout", func(w http.ResponseWriter, r *http.Request) {
		_ = hydraPage.Execute(w, pageData{Title: "Signed out"})
	})
	return mux
}

type loginRequest struct {
	Skip    bool   `json:"skip"`
	Subject string `json:"subject"`
}

type redirect struct {
	RedirectTo string `json:"redirect_to"`
}

func (a *hydraApp) fail(w http.ResponseWriter, err error) {
	http.Error(w, err.Error(), http.StatusBadGateway)
}

func (a *hydraApp) loginForm(w http.ResponseWriter, r *http.Request) {
	ch := r.URL.Query().Get("login_challenge")
	var lr loginRequest
	if _, err := adminCall(a.admin, http.MethodGet, "/admin/oauth2/auth/requests/login?login_challenge="+url.QueryEscape(ch), nil, &lr); err != nil {
		a.fail(w, err)
		return
	}
	if lr.Skip {
		a.acceptLogin(w, r, ch, lr.Subject)
		return
	}
	_ = hydraPage.Execute(w, pageData{Title: "Sign in", Kind: "login", Challenge: ch})
}

func (a *hydraApp) login(w http.ResponseWriter, r *http.Request) {
	ch := r.PostFormValue("challenge")
	for _, u := range a.users {
		if u.Username == r.PostFormValue("username") && u.Password == r.PostFormValue("password") {
			a.acceptLogin(w, r, ch, u.Subject)
			return
		}
	}
	w.WriteHeader(http.StatusUnauthorized)
	_ = hydraPage.Execute(w, pageData{Title: "Sign in", Kind: "login", Challenge: ch, Error: "Wrong username or password."})
}

func (a *hydraApp) acceptLogin(w http.ResponseWriter, r *http.Request, ch, subject string) {
	var to redirect
	// remember: Hydra keeps a login session (its sid), which its logout
	// and back-channel logout act on.
	body := map[string]any{"subject": subject, "remember": true, "remember_for": 0}
	if _, err := adminCall(a.admin, http.MethodPut, "/admin/oauth2/auth/requests/login/accept?login_challenge="+url.QueryEscape(ch), body, &to); err != nil {
		a.fail(w, err)
		return
	}
	http.Redirect(w, r, to.RedirectTo, http.StatusFound)
}

type consentRequest struct {
	Skip           bool     `json:"skip"`
	Subject        string   `json:"subject"`
	RequestedScope []string `json:"requested_scope"`
	RequestedAud   []string `json:"requested_access_token_audience"`
	Client         struct {
		ClientID string `json:"client_id"`
	} `json:"client"`
}

func (a *hydraApp) consentRequest(ch string) (consentRequest, error) {
	var cr consentRequest
	_, err := adminCall(a.admin, http.MethodGet, "/admin/oauth2/auth/requests/consent?consent_challenge="+url.QueryEscape(ch), nil, &cr)
	return cr, err
}

func (a *hydraApp) consentForm(w http.ResponseWriter, r *http.Request) {
	ch := r.URL.Query().Get("consent_challenge")
	cr, err := a.consentRequest(ch)
	if err != nil {
		a.fail(w, err)
		return
	}
	if cr.Skip {
		a.acceptConsent(w, r, ch, cr)
		return
	}
	_ = hydraPage.Execute(w, pageData{Title: "Allow access", Kind: "consent", Challenge: ch, Client: cr.Client.ClientID, Scopes: cr.RequestedScope})
}

func (a *hydraApp) consent(w http.ResponseWriter, r *http.Request) {
	ch := r.PostFormValue("challenge")
	cr, err := a.consentRequest(ch)
	if err != nil {
		a.fail(w, err)
		return
	}
	a.acceptConsent(w, r, ch, cr)
}

func (a *hydraApp) acceptConsent(w http.ResponseWriter, r *http.Request, ch string, cr consentRequest) {
	idToken := map[string]any{}
	for _, u := range a.users {
		if u.Subject != cr.Subject {
			continue
		}
		for scope, names := range scopeClaims {
			if !slices.Contains(cr.RequestedScope, scope) {
				continue
			}
			for _, n := range names {
				if v, ok := u.Claims[n]; ok {
					idToken[n] = v
				}
			}
		}
	}
	body := map[string]any{
		"grant_scope":                 cr.RequestedScope,
		"grant_access_token_audience": cr.RequestedAud,
		"remember":                    true,
		"remember_for":                0,
		"session":                     map[string]any{"id_token": idToken},
	}
	var to redirect
	if _, err := adminCall(a.admin, http.MethodPut, "/admin/oauth2/auth/requests/consent/accept?consent_challenge="+url.QueryEscape(ch), body, &to); err != nil {
		a.fail(w, err)
		return
	}
	http.Redirect(w, r, to.RedirectTo, http.StatusFound)
}

func (a *hydraApp) logoutForm(w http.ResponseWriter, r *http.Request) {
	ch := r.URL.Query().Get("logout_challenge")
	if _, err := adminCall(a.admin, http.MethodGet, "/admin/oauth2/auth/requests/logout?logout_challenge="+url.QueryEscape(ch), nil, nil); err != nil {
		a.fail(w, err)
		return
	}
	_ = hydraPage.Execute(w, pageData{Title: "Sign out", Kind: "logout", Challenge: ch})
}

func (a *hydraApp) logout(w http.ResponseWriter, r *http.Request) {
	ch := r.PostFormValue("challenge")
	var to redirect
	if _, err := adminCall(a.admin, http.MethodPut, "/admin/oauth2/auth/requests/logout/accept?logout_challenge="+url.QueryEscape(ch), nil, &to); err != nil {
		a.fail(w, err)
		return
	}
	http.Redirect(w, r, to.RedirectTo, http.StatusFound)
}
