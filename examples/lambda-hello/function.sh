# The handler: gets the event as $1, prints the response; stderr is the call's log.
function handler () {
  EVENT_DATA=$1
  echo "got event: $EVENT_DATA" 1>&2
  echo "{\"hello\": \"from bash\", \"function\": \"$AWS_LAMBDA_FUNCTION_NAME\", \"event\": $EVENT_DATA}"
}
