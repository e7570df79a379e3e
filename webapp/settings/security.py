"""What guards the site in every environment: response headers (a Content-Security-Policy of
our own, as Django 5.2 has none), the proxies trusted for a client's address, and the rate
limits on sign-in and on annotators' submissions. HTTPS, HSTS and secure cookies are in
``production``."""
from webapp.env import env
from webapp.settings.storage import MEDIA_ORIGINS

X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

# Set on every response that has no policy of its own (webapp.middleware.ContentSecurityPolicyMiddleware;
# the report preview sets a sandbox). The pages load their scripts and styles from /static/
# and have no inline script, style element or style attribute, so nothing inline is allowed.
# Images: ours, data: URIs (the favicon), and object storage where media URLs point there
# (researchers' dataset page).
CALIBRA_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:", *MEDIA_ORIGINS],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
# Pages that cannot follow it, by path prefix: drf-spectacular's Swagger page writes its setup
# (with the CSRF token) as an inline script and a <style> element. (Its split view would serve the
# script from a URL.)
CALIBRA_CSP_BY_PATH = {
    "/api/docs/": {**CALIBRA_CSP, "script-src": ["'self'", "'unsafe-inline'"],
                   "style-src": ["'self'", "'unsafe-inline'"]},
}

# Reverse proxies in front of the web process that append to X-Forwarded-For: the client's
# address (audit log, per-address sign-in limit) is the entry the outermost one added. 0: use
# REMOTE_ADDR (no proxy; a client could forge the header).
CALIBRA_NUM_PROXIES = env.int("NUM_PROXIES", default=0)

# Failed sign-ins (the login page, the admin's, the token endpoint) per username and per
# address in a fixed window; past either limit every attempt is refused until the window
# ends, a right password included. Per address is higher: a lab or a crowd platform puts many
# annotators behind one address.
CALIBRA_SIGN_IN_WINDOW_S = env.int("SIGN_IN_WINDOW_S", default=15 * 60)
CALIBRA_SIGN_IN_FAILURES_PER_USERNAME = env.int("SIGN_IN_FAILURES_PER_USERNAME", default=10)
CALIBRA_SIGN_IN_FAILURES_PER_IP = env.int("SIGN_IN_FAILURES_PER_IP", default=30)

# Judgments and skips per annotator: at most SUBMIT_RATE_COUNT in each window of
# SUBMIT_RATE_WINDOW_S seconds (one cache increment per submission). 30 per 3 s is 10 a second
# sustained with bursts of 30: several times what a fast keyboard annotator reaches, and above
# the load benchmark (1 item/s each in its realistic mode, about 6/s each when saturating).
# A count of 0 turns the limit off.
CALIBRA_SUBMIT_RATE_COUNT = env.int("SUBMIT_RATE_COUNT", default=30)
CALIBRA_SUBMIT_RATE_WINDOW_S = env.int("SUBMIT_RATE_WINDOW_S", default=3)
