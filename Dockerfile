# syntax=docker/dockerfile:1
# Sluice function app image for AKS (KEDA) or any Kubernetes: the Functions host
# 4.x with the Python 3.11 worker, the app under /home/site/wwwroot, runtime
# dependencies only (requirements.txt; never requirements-dev.txt).
#
#   docker build -t <registry>.azurecr.io/sluice:<git-sha> .
#
# The same image serves every deployment in k8s-keda/: which functions a pod runs
# is chosen at run time by AzureFunctionsJobHost__functions__<n>.
# Pin the base by digest in your registry mirror for reproducible builds
# (FROM mcr.microsoft.com/azure-functions/python:4-python3.11@sha256:...).
FROM mcr.microsoft.com/azure-functions/python:4-python3.11

# MALLOC_ARENA_MAX: glibc would give each thread of the host and the worker an arena of
# its own, up to eight per core of the node (not of the pod's CPU limit), and the resident
# size creeps up with them. Two arenas keep it lower at no measurable CPU cost
# (docs/configuration.md#the-worker-process). The dev host limits itself the same way.
# SSL_CERT_FILE/SSL_CERT_DIR: the Debian CA store of the base image. psycopg[binary]'s libpq
# carries its own OpenSSL, whose default CA locations (what sslrootcert=system loads) do
# not exist here; without these it would trust no CA at all (docs/security.md#tls).
# HOME: the base image sets /home, owned by root and read-only at run time (the manifests'
# readOnlyRootFilesystem); whatever the host or a library keeps under the home directory
# goes to /tmp, the pod's writable emptyDir, as the user's home directory says.
ENV AzureWebJobsScriptRoot=/home/site/wwwroot \
    HOME=/tmp \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_DIR=/etc/ssl/certs \
    AzureFunctionsJobHost__Logging__Console__IsEnabled=true \
    FUNCTIONS_WORKER_RUNTIME=python \
    ASPNETCORE_URLS=http://+:8080 \
    MALLOC_ARENA_MAX=2 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first: this layer is reused until requirements.txt changes.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt

# Only what the host and the worker load: the app, its blueprints, the pipeline
# (with its SQL migrations), the OpenAPI document the lookups serve, and the
# operations CLI (python -m sluice migrate, run as a Job from this image).
# Never local.settings.json: settings come from the environment (k8s-keda/).
COPY host.json function_app.py /home/site/wwwroot/
COPY functions/ /home/site/wwwroot/functions/
COPY shared/ /home/site/wwwroot/shared/
COPY sluice/ /home/site/wwwroot/sluice/
COPY docs/openapi.json /home/site/wwwroot/docs/openapi.json

# Bytecode compiled at build time: the root filesystem is read-only at run time.
# A fixed unprivileged user (the manifests also set runAsUser/runAsNonRoot);
# port 8080 because a non-root process cannot bind 80.
RUN python -m compileall -q /home/site/wwwroot \
    && groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin sluice

USER 10001:10001
WORKDIR /home/site/wwwroot
EXPOSE 8080

# The host itself is PID 1, so that Kubernetes' SIGTERM reaches it and it shuts down
# (in-flight batches, the change feed's continuation, partition ownership and timer
# leases) within terminationGracePeriodSeconds. The base image's CMD,
# /opt/startup/start_nonappservice.sh, is a bash script that runs the host as a child
# without exec: bash as PID 1 ignores SIGTERM and forwards nothing, so the host was
# SIGKILLed when the grace period ran out. The script sets no environment (the ENV
# above and the base image's are the host's either way); it only sources
# install_ca_certificates.sh, which copies App Service's CA files (/var/ssl/root,
# WEBSITES_INCLUDE_CLOUD_CERTS) and runs update-ca-certificates: nothing to copy here,
# and neither possible as uid 10001 nor on a read-only root filesystem. Custom CAs
# belong in the image at build time (SSL_CERT_FILE above). There is no init to reap
# orphaned processes: the host waits for the Python worker it starts, and Sluice
# starts no processes of its own (an init such as tini would be needed if it did).
CMD ["/azure-functions-host/Microsoft.Azure.WebJobs.Script.WebHost"]
