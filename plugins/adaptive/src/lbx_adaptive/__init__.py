"""lbx-adaptive: selection driven by feedback from the traffic itself.

Two plugins in one distribution, each registered under its own entry-point name:

- ``leastconn`` (``lbx_adaptive.leastconn``): weighted least outstanding requests, counted across
  every request of the service (cloudflare/pingora#144).
- ``ewma`` (``lbx_adaptive.ewma``): power of two choices over a peak-EWMA of response-head latency
  times outstanding requests (Finagle's and Linkerd's ``PeakEwma``).

Both define ``on_start``/``on_finish`` (lbx calls them around every upstream attempt) and
``inherit`` (they keep their counts and latencies when the backend set changes).
"""

from lbx_adaptive.ewma import PeakEwma
from lbx_adaptive.leastconn import LeastConnections

__all__ = ["LeastConnections", "PeakEwma"]
