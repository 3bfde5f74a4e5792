#!/bin/sh
# exec runtime: one process per call. The request body is on stdin; an HTTP call's method, path,
# query and headers are in Http_* variables; what this prints on stdout is the response, what it
# prints on stderr is the call's log.
name=world
case "&${Http_Query:-}&" in
  *"&name="*) name=${Http_Query#*name=}; name=${name%%&*} ;;
esac
bytes=$(wc -c | tr -d ' ')
echo "hello $name from $EASYFAAS_FUNCTION_NAME: ${Http_Method:-INVOKE} ${Http_Path:-} with $bytes bytes of body"
echo "served request $EASYFAAS_REQUEST_ID" >&2
