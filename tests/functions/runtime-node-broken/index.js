// Has no `handler` export: fcsup's runtime must report an init error.
'use strict';
exports.notTheHandler = async () => 'never';
