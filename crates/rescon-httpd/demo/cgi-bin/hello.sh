#!/bin/sh
# A CGI script: prints its CGI environment as text.
printf 'Content-Type: text/plain; charset=utf-8\r\n\r\n'
printf 'Hello from a CGI script running in container %s.\n\n' "${RESCON_CONTAINER:-?}"
for v in GATEWAY_INTERFACE SERVER_PROTOCOL SERVER_NAME SERVER_PORT REQUEST_METHOD \
         SCRIPT_NAME PATH_INFO QUERY_STRING REMOTE_ADDR HTTP_USER_AGENT RESCON_CONTAINER; do
    eval "val=\${$v-}"
    printf '%s=%s\n' "$v" "$val"
done
