// Forces the Node test servers onto 127.0.0.1: they have no host option.
const net = require('net');
const orig = net.Server.prototype.listen;
net.Server.prototype.listen = function (...a) {
  const x = a[0];
  if (x && typeof x === 'object' && x.path === undefined && !(x instanceof net.Server)) {
    a[0] = Object.assign({}, x, { host: '127.0.0.1' });
  } else if (typeof x === 'number' || (typeof x === 'string' && /^\d+$/.test(x))) {
    if (typeof a[1] === 'string') a[1] = '127.0.0.1'; else a.splice(1, 0, '127.0.0.1');
  }
  return orig.apply(this, a);
};
