#!/bin/sh
# A CGI script that burns CPU: ?n=ITERATIONS (default 100000, at most 50000000).
n=100000
case "$QUERY_STRING" in
    n=*) q=${QUERY_STRING#n=}
         case "$q" in ''|*[!0-9]*) ;; *) n=$q ;; esac ;;
esac
if [ ${#n} -gt 8 ] || [ "$n" -gt 50000000 ]; then
    printf 'Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nn is at most 50000000\n'
    exit 0
fi
i=0
while [ "$i" -lt "$n" ]; do i=$((i + 1)); done
printf 'Content-Type: text/plain\r\n\r\n'
printf 'spun %s iterations in container %s\n' "$n" "${RESCON_CONTAINER:-?}"
