#!/bin/sh
# exec runtime with `streaming: true`: the HTTP request body flows into stdin as it arrives and
# what this prints on stdout flows back as it is printed (chunked), so bodies of any size pass
# through in a few hundred KiB of memory. stderr is the call's log; exit status ≠ 0 is an error.
case "&${Http_Query:-}&" in
  *"&op=count&"*) exec wc -c ;;              # the body's size in bytes
  *"&op=upper&"*) exec tr 'a-z' 'A-Z' ;;     # the body upper-cased, streamed back while it arrives
  *) sha256sum | cut -d' ' -f1 ;;            # the body's SHA-256, in hex
esac
