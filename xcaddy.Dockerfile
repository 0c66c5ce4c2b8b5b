# Builds Caddy with the smart_imaging module using xcaddy, then runs it in a
# slim image as a non-root user.
#
#   docker build -f xcaddy.Dockerfile -t smart-imaging .
#   docker run -p 8080:8080 -e SMART_IMAGING_KEY=... smart-imaging
#
# The build context is this repository; xcaddy builds the local copy
# (`--with module@v0.0.0=/src`: no module proxy lookup for our own path).

FROM golang:1.26-bookworm AS build
ARG CADDY_VERSION=v2.11.9
ARG XCADDY_VERSION=v0.4.5
RUN go install github.com/caddyserver/xcaddy/cmd/xcaddy@${XCADDY_VERSION}
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 xcaddy build ${CADDY_VERSION} \
	--output /out/caddy \
	--with github.com/smart-imaging/smart_imaging@v0.0.0=/src \
	&& /out/caddy list-modules | grep -q '^http.handlers.smart_imaging$'

FROM debian:bookworm-slim
RUN apt-get update \
	&& apt-get install -y --no-install-recommends ca-certificates \
	&& rm -rf /var/lib/apt/lists/* \
	&& useradd --system --home /var/lib/caddy --create-home --uid 10001 caddy
COPY --from=build /out/caddy /usr/bin/caddy
COPY examples /srv/examples
COPY Caddyfile.example /etc/caddy/Caddyfile.example
WORKDIR /srv
USER caddy
ENV XDG_CONFIG_HOME=/var/lib/caddy/config XDG_DATA_HOME=/var/lib/caddy/data
EXPOSE 8080
# The demo by default; mount your own Caddyfile at /etc/caddy/Caddyfile and
# pass --config /etc/caddy/Caddyfile to serve a PACS.
CMD ["caddy", "run", "--config", "/srv/examples/demo/Caddyfile", "--adapter", "caddyfile"]
