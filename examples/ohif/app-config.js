/** OHIF viewer configuration for smart_imaging's patient-scoped DICOMweb root.
 *
 * OHIF speaks plain DICOMweb (QIDO-RS, WADO-RS). smart_imaging serves it at
 * {route}/dicomweb/ for the patient the SMART access token is bound to: the
 * study list shows that patient's studies only, and any other study UID is
 * "not found". Edit DICOMWEB_ROUTE to name your route (the handle_path that
 * carries `smart_imaging { … dicomweb_root }`).
 *
 * The token: a SMART launch (EHR launch or standalone) ends with an access
 * token in the launching page. That page hands it to OHIF in the URL
 * fragment, never in the query (fragments are not sent to servers and do not
 * reach access logs):
 *
 *     https://imaging.example.org/#access_token=eyJ…
 *
 * This file keeps it in sessionStorage (this tab only), removes it from the
 * address bar, and adds "Authorization: Bearer …" to the requests OHIF makes
 * to the DICOMweb root, and to no other origin or path.
 */
(function () {
  'use strict';
  const DICOMWEB_ROUTE = '/ehr'; // the route prefix; the root is {route}/dicomweb
  const root = window.location.origin + DICOMWEB_ROUTE + '/dicomweb';
  const KEY = 'smart_imaging_access_token';

  const m = /(?:^#|&)access_token=([^&]+)/.exec(window.location.hash);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', window.location.pathname + window.location.search);
  }
  const token = () => sessionStorage.getItem(KEY);
  const forRoot = (url) => {
    try {
      const u = new URL(url, window.location.href);
      return u.origin === window.location.origin && (u.pathname + '/').startsWith(DICOMWEB_ROUTE + '/dicomweb/');
    } catch (e) {
      return false;
    }
  };

  // dicomweb-client (OHIF's DICOMweb library) uses XMLHttpRequest; some
  // OHIF paths use fetch. Both get the token, for the root only.
  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this.__smartImagingAuth = forRoot(url);
    return open.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    if (this.__smartImagingAuth && token()) {
      this.setRequestHeader('Authorization', 'Bearer ' + token());
    }
    return send.apply(this, arguments);
  };
  const fetch0 = window.fetch;
  window.fetch = function (input, init) {
    const url = typeof input === 'string' ? input : input && input.url;
    if (forRoot(url) && token()) {
      init = Object.assign({}, init);
      const h = new Headers(init.headers || (typeof input === 'object' ? input.headers : undefined));
      h.set('Authorization', 'Bearer ' + token());
      init.headers = h;
    }
    return fetch0.call(this, input, init);
  };

  window.config = {
    routerBasename: '/',
    extensions: [],
    modes: [],
    showStudyList: true,
    maxNumberOfWebWorkers: 2,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: false,
    showLoadingIndicator: true,
    defaultDataSourceName: 'smart-imaging',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'smart-imaging',
        configuration: {
          friendlyName: 'smart_imaging (patient-scoped DICOMweb)',
          name: 'smart-imaging',
          wadoUriRoot: root,
          qidoRoot: root,
          wadoRoot: root,
          qidoSupportsIncludeField: false,
          supportsReject: false,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: false,
          staticWado: false,
          singlepart: '',
          bulkDataURI: { enabled: true },
          omitQuotationForMultipartRequest: true,
        },
      },
    ],
  };
})();
