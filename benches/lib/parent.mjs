// The child side of host.mjs's protocol: each message from the parent (start, run, close) goes to
// `handle`, and its value or error goes back under the message's id; after `close` the process
// exits, and it exits too when the parent goes away (crashed or interrupted), so no child lingers.
export function answerParent(handle) {
  process.on('message', async ({ id, ...message }) => {
    try {
      const value = await handle(message)
      process.send({ id, ok: true, value }, () => message.type === 'close' && process.exit(0))
    } catch (error) {
      process.send({ id, ok: false, error: error?.stack ?? String(error) })
    }
  })
  process.on('disconnect', () => process.exit(1))
}
