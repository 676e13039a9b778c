"""lbx-hashing: selection by a hash of the request's key.

Two plugins in one distribution, each registered under its own entry-point name:

- ``fnv`` (``lbx_hashing.fnv``): FNV-1a 64 of the key over the weighted list, Pingora's ``FNVHash``.
- ``consistent`` (``lbx_hashing.consistent``): the ketama ring of nginx's ``hash ... consistent``
  and Pingora's ``Consistent``; removing one of N backends moves only about 1/N of the keys.

The key is the service's ``hash_key`` (client IP, a header, a cookie, the path or the URI) or what
a ``selection_key`` hook returns.
"""

from lbx_hashing.consistent import Consistent
from lbx_hashing.fnv import FnvHash, fnv1a_64

__all__ = ["Consistent", "FnvHash", "fnv1a_64"]
