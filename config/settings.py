"""Settings, read once at start-up from the environment (12-factor).

Every variable is listed with its default and meaning in README.md. Without DATABASE_URL and
CELERY_BROKER_URL the project runs on embedded defaults (SQLite and a filesystem broker under
var/), which is enough for one person trying it; teams run PostgreSQL and Redis.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PATCHWISE_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: use 1/0, true/false, yes/no or on/off")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
_DEV_SECRET_KEY = "django-insecure-patchwise-development-only-key-never-use-in-production"
# With DEBUG on (make up) a missing SECRET_KEY falls back to a development key; with DEBUG off
# the app refuses to start without one, since sessions and tokens would be signed with a key
# anyone can read in this file.
SECRET_KEY = os.environ.get("SECRET_KEY", "").strip()
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set and DEBUG is off: set SECRET_KEY to a long random string, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(50))' (or DEBUG=1 to try "
            "the app on your own machine)"
        )
    SECRET_KEY = _DEV_SECRET_KEY
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "csp",
    "ninja",
    "axes",
    "accounts",
    "annotate",
    "training",
    "rounds",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.LoginRequiredMiddleware",
    "accounts.middleware.PasswordChangeRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "config.middleware.CSPMiddleware",
    # last, as axes asks: it turns a locked-out login into the lock-out page
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "config.context_processors.patchwise",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'patchwise.sqlite3'}",
        conn_max_age=int(os.environ.get("CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
# Parallel test runs (several developers, CI) each name their own test database.
if os.environ.get("TEST_DATABASE_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["TEST_DATABASE_NAME"]}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's backend with a health check that costs no round trip (config/postgresql/base.py).
    DATABASES["default"]["ENGINE"] = "config.postgresql"
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # The hot paths' statements (core/rows.py) are prepared on their fifth run per connection,
    # so PostgreSQL stops planning them per request. A pooler in transaction mode older than
    # PgBouncer 1.21 cannot keep prepared statements: set PATCHWISE_PREPARED_STATEMENTS=0 there.
    if os.environ.get("PATCHWISE_PREPARED_STATEMENTS", "1") != "0":
        DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 5
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # One person trying the app: wait for the writer instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Login throttling (django-axes, accounts/throttle.py): after this many failed logins for one
# username, or from one client address, further tries are refused for the cool-off time (each
# try during it restarts the wait). `manage.py unlock_login USERNAME` lifts a lock at once.
AUTHENTICATION_BACKENDS = [
    "accounts.throttle.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("PATCHWISE_LOGIN_FAILURE_LIMIT", "10"))
AXES_COOLOFF_TIME = timedelta(
    minutes=float(os.environ.get("PATCHWISE_LOGIN_COOLOFF_MINUTES", "15"))
)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# Not reset by a success: one's own login from the same address would wipe the count of the
# guesses at someone else's password made from there. Failures older than the cool-off lapse.
AXES_RESET_ON_SUCCESS = False
AXES_LOCKOUT_CALLABLE = "accounts.throttle.lockout_response"
AXES_CLIENT_IP_CALLABLE = "accounts.throttle.client_ip"
AXES_VERBOSE = False
# Reverse proxies in front of the app that append the client's address to X-Forwarded-For
# (0: none, REMOTE_ADDR is the client). Login throttling counts failures per client address.
PATCHWISE_TRUSTED_PROXIES = int(os.environ.get("PATCHWISE_TRUSTED_PROXIES", "0"))
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # Hashed, long-cached names once `collectstatic` has run (production images do);
        # plain names otherwise, so `runserver` and the tests need no build step.
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if (STATIC_ROOT / "staticfiles.json").exists() and not DEBUG
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Tests and `runserver` without collectstatic still find files through the finders.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Uploads: a case file larger than this is refused with a message naming the limit.
PATCHWISE_MAX_UPLOAD_BYTES = int(os.environ.get("PATCHWISE_MAX_UPLOAD_BYTES", 20 * 1024 * 1024))
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# The annotation queue: how long a leased pair stays reserved for the annotator who has it.
PATCHWISE_LEASE_SECONDS = int(os.environ.get("PATCHWISE_LEASE_SECONDS", "600"))
# A web worker remembers a bearer token's check this long (0: never): a revoked token, a
# deactivated user or a changed role takes effect in every worker within this time.
PATCHWISE_TOKEN_CHECK_SECONDS = float(os.environ.get("PATCHWISE_TOKEN_CHECK_SECONDS", "1"))
# GPU jobs: a running job's worker writes a heartbeat this often; a job whose heartbeat is older
# than the stale limit is failed by the periodic reaper (its worker died).
PATCHWISE_JOB_HEARTBEAT_SECONDS = float(os.environ.get("PATCHWISE_JOB_HEARTBEAT_SECONDS", "10"))
PATCHWISE_JOB_STALE_SECONDS = float(os.environ.get("PATCHWISE_JOB_STALE_SECONDS", "90"))
# Light Celery tasks (every task off the gpu queue: the reapers) are stopped after these many
# seconds: the soft limit raises SoftTimeLimitExceeded inside the task (its transaction rolls
# back), the hard one kills the worker child that ignored it. Beat runs the reapers every 60 s,
# so a reaper stuck on a lock ends before the next one starts. GPU tasks have no time limit:
# their heartbeat and the reaper watch them (config/celery.py).
PATCHWISE_LIGHT_TASK_SOFT_SECONDS = float(os.environ.get("PATCHWISE_LIGHT_TASK_SOFT_SECONDS", "45"))
PATCHWISE_LIGHT_TASK_HARD_SECONDS = float(os.environ.get("PATCHWISE_LIGHT_TASK_HARD_SECONDS", "55"))
if not 0 < PATCHWISE_LIGHT_TASK_SOFT_SECONDS < PATCHWISE_LIGHT_TASK_HARD_SECONDS:
    raise ImproperlyConfigured(
        f"PATCHWISE_LIGHT_TASK_SOFT_SECONDS={PATCHWISE_LIGHT_TASK_SOFT_SECONDS:g} must be above 0 "
        f"and below PATCHWISE_LIGHT_TASK_HARD_SECONDS={PATCHWISE_LIGHT_TASK_HARD_SECONDS:g}"
    )
# GPUs a gpu worker may give one job (its node's GPUs; one worker per node). A job whose
# config asks for more ("gpus") is refused at launch; one above 1 trains under torchrun.
PATCHWISE_WORKER_GPUS = int(os.environ.get("PATCHWISE_WORKER_GPUS", "1"))
# Memory of one gpu worker's GPU, in GiB (unset: unknown). The launch form and the API check a
# job's memory plan against it before the job is queued; the worker checks its own device again.
PATCHWISE_WORKER_GPU_MEMORY_GIB = (
    float(os.environ["PATCHWISE_WORKER_GPU_MEMORY_GIB"])
    if os.environ.get("PATCHWISE_WORKER_GPU_MEMORY_GIB")
    else None
)

ARTIFACT_ROOT = Path(os.environ.get("ARTIFACT_ROOT", VAR_DIR / "artifacts"))
PATCHWISE_BASE_MODEL = os.environ.get("PATCHWISE_BASE_MODEL", str(VAR_DIR / "demo-model"))
# The folders a job's or a generation's `model`/`adapter` path must lie under (colon-separated;
# unset: the base model's folder and ARTIFACT_ROOT, as they are at the time of the check). A path
# outside them is refused with one message whether it exists or not, so a launch cannot be used
# to probe the server's disk.
PATCHWISE_MODEL_ROOTS = [
    Path(root) for root in os.environ.get("PATCHWISE_MODEL_ROOTS", "").split(os.pathsep) if root
] or None
# A monitor that sends `Authorization: Bearer <this>` to /healthz reads why a part is down;
# anonymous probes see only "ok"/"down" (staff sessions see the reasons too).
PATCHWISE_HEALTHZ_TOKEN = os.environ.get("PATCHWISE_HEALTHZ_TOKEN", "")

# Security headers; the deploy ones apply when DEBUG is off (manage.py check --deploy is clean).
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # /healthz answers plain HTTP probes from the orchestrator.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

# No third-party origin, no inline script except what carries the per-request nonce.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# Celery. Without CELERY_BROKER_URL: a filesystem broker under var/ that needs no server.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
_BROKER_DIR = VAR_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "queue"),
        "data_folder_out": str(_BROKER_DIR / "queue"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        # kombu's default is ./control, a folder left wherever the process was started
        "control_folder": str(_BROKER_DIR / "control"),
    }
    _default_results = f"file://{VAR_DIR / 'results'}"
    (VAR_DIR / "results").mkdir(parents=True, exist_ok=True)
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
    _default_results = CELERY_BROKER_URL
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", _default_results)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
