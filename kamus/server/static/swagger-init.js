// Starts Swagger UI on /docs (kamus/server/docs_ui.py). A file, not an inline script, so that the page's
// Content-Security-Policy can refuse every inline script. The options are FastAPI's defaults, with
// the online validator off: its badge is an image from validator.swagger.io, another origin.
"use strict";

window.ui = SwaggerUIBundle({
  // Relative to the page, so that it stays right behind a path prefix (root_path).
  url: "openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
