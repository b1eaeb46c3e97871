// Freeze-hazard fixture for fcsup's Node.js runtime (tests/freeze_hazards.rs): `timer` leaves a
// setTimeout of `flushMetrics` pending; anything else is clean.
'use strict';

exports.handler = async (event) => {
  if (event.toString() === 'timer') {
    setTimeout(function flushMetrics() {}, 30000);
  }
  return 'ok';
};
