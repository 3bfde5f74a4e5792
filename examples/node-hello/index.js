// The node-hello function: greets whoever the query string or JSON body names.
exports.handler = async (event, context) => {
  event = event || {};
  let name = (event.queryStringParameters || {}).name;
  if (name === undefined && event.body) {
    try {
      name = JSON.parse(event.body).name;
    } catch (err) {
      name = undefined;
    }
  }
  if (name === undefined) name = event.name || 'world';
  console.log(`greeting ${name}`);
  return {
    hello: name,
    function: context.functionName,
    version: context.functionVersion,
    request_id: context.awsRequestId,
    node: process.version,
  };
};
