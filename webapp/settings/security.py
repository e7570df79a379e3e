"""What guards the site in every environment: response headers (a Content-Security-Policy of
our own, as Django 5.2 has none), the proxies trusted for a client's address, and the rate
limits on sign-in and on annotators' submissions. HTTPS, HSTS and secure cookies are in
``production``."""
import ipaddress

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

# The reverse proxies in front of the web process (addresses or networks: "127.0.0.1,::1,
# 172.16.0.0/12"): X-Forwarded-For is read only on a request that one of them made, and the
# client's address (audit log, sign-in limits) is its right-most entry that is not one of them.
# Empty: REMOTE_ADDR (whoever else sends the header could forge it). Parsed here, so a typo
# stops start-up.
def trusted_proxies(default: list[str]) -> list[str]:
    return [str(ipaddress.ip_network(entry.strip(), strict=False))
            for entry in env.list("TRUSTED_PROXIES", default=default) if entry.strip()]


CALIBRA_TRUSTED_PROXIES = trusted_proxies(default=[])

# Failed sign-ins (the login page, the admin's, the token endpoint) in a fixed window: past
# either limit every attempt is refused until the window ends, a right password included. Per
# username AND address, so that someone elsewhere failing at a known username cannot lock its
# owner out; per address across usernames (trying many accounts), higher since a lab or a crowd
# platform puts many annotators behind one address.
CALIBRA_SIGN_IN_WINDOW_S = env.int("SIGN_IN_WINDOW_S", default=15 * 60)
CALIBRA_SIGN_IN_FAILURES_PER_USERNAME_AND_IP = env.int("SIGN_IN_FAILURES_PER_USERNAME_AND_IP", default=10)
CALIBRA_SIGN_IN_FAILURES_PER_IP = env.int("SIGN_IN_FAILURES_PER_IP", default=30)

# Judgments and skips per annotator: at most SUBMIT_RATE_COUNT in each window of
# SUBMIT_RATE_WINDOW_S seconds (one cache increment per submission). 30 per 3 s is 10 a second
# sustained with bursts of 30: several times what a fast keyboard annotator reaches, and above
# the load benchmark (1 item/s each in its realistic mode, about 6/s each when saturating).
# A count of 0 turns the limit off.
CALIBRA_SUBMIT_RATE_COUNT = env.int("SUBMIT_RATE_COUNT", default=30)
CALIBRA_SUBMIT_RATE_WINDOW_S = env.int("SUBMIT_RATE_WINDOW_S", default=3)

# New crowd accounts (a study link followed with a worker id it has not seen) per client address
# and per study link, in a fixed window; past either, 429. A crowd platform's workers arrive from
# their own homes, so 5 an hour from one address is plenty; the link's limit bounds what many
# addresses together can make. 0 turns a limit off.
CALIBRA_CROWD_JOIN_WINDOW_S = env.int("CROWD_JOIN_WINDOW_S", default=3600)
CALIBRA_CROWD_JOINS_PER_IP = env.int("CROWD_JOINS_PER_IP", default=5)
CALIBRA_CROWD_JOINS_PER_LINK = env.int("CROWD_JOINS_PER_LINK", default=200)
