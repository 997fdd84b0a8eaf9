// What went wrong in the page, for the browser test to look at: uncaught
// errors, rejected promises and Content-Security-Policy violations.
// Imported first by app.js, so it listens before any other module runs.

export const diagnostics = { errors: [], cspViolations: [] };
window.addEventListener('error', (e) => diagnostics.errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => diagnostics.errors.push(String(e.reason)));
document.addEventListener('securitypolicyviolation', (e) =>
  diagnostics.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
