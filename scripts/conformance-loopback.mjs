// Preloaded (node --import) into the cache-tests origin server so that it listens on 127.0.0.1
// only: the suite's server/server.mjs calls server.listen(port), which binds every interface.
// Patching listen() here leaves the suite's own files as upstream wrote them.
import net from 'net'

const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  const portOnly = args.length > 0 && (typeof args[0] === 'number' || /^\d+$/.test(String(args[0])))
  if (portOnly && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1')
  }
  return listen.apply(this, args)
}
