// An ES module handler (FC's nodejs18+ style) for tests/runtime_api.rs.
export const handler = async (event, context) => `esm:${event.toString()}:${context.requestId}`;
