// HTTP with readable errors: every failure becomes a ViewerError whose
// message a person can act on, with the server's own words (a FHIR
// OperationOutcome or an OAuth error) as its detail.

/** An error to show in the page. */
export class ViewerError extends Error {
	/**
	 * @param {string} message what went wrong, in plain words
	 * @param {{status?: number, detail?: string}} [opts]
	 */
	constructor(message, { status = 0, detail = '' } = {}) {
		super(message);
		this.name = 'ViewerError';
		this.status = status;
		this.detail = detail;
	}
}

const explanations = {
	400: 'The server did not understand the request.',
	401: 'The server needs a valid access token: connect with SMART first, or connect again if the session has expired.',
	403: 'Access denied: this access token or patient may not see these images.',
	404: 'Not found on the server.',
	406: 'The server cannot send this kind of data.',
	429: 'The server is busy; try again shortly.',
	502: 'The imaging server could not reach its image archive (PACS) or the authorization server.',
	503: 'The authorization server or the image archive is busy; try again shortly.',
	504: 'The image archive or the authorization server did not answer in time; try again shortly.',
};

const reasonPhrases = {
	400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found',
	406: 'Not Acceptable', 429: 'Too Many Requests', 500: 'Internal Server Error',
	502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
};

/** The origin of a URL, for messages (never the path: it may hold a study token). */
export function originOf(url) {
	try {
		return new URL(url, location.href).origin;
	} catch {
		return String(url);
	}
}

/**
 * The human text of an error body: OperationOutcome issues, an OAuth error,
 * or a short plain-text body.
 * @param {string} text
 * @returns {string}
 */
export function errorBodyText(text) {
	let j;
	try {
		j = JSON.parse(text);
	} catch {
		const t = text.trim();
		return t && !t.startsWith('<') ? t.slice(0, 300) : '';
	}
	if (j && j.resourceType === 'OperationOutcome' && Array.isArray(j.issue)) {
		return j.issue.map((i) => i.diagnostics || (i.details && i.details.text) || i.code).filter(Boolean).join('; ');
	}
	if (j && typeof j.error === 'string') {
		return j.error_description ? `${j.error}: ${j.error_description}` : j.error;
	}
	return '';
}

/**
 * fetch that throws a ViewerError on network failures and non-2xx answers.
 * @param {string} url
 * @param {{what: string, token?: string, accept?: string, method?: string, body?: BodyInit, headers?: Record<string,string>}} opts
 *   what says what the page was doing ("searching for imaging studies").
 * @returns {Promise<Response>}
 */
export async function request(url, { what, token, accept, method = 'GET', body, headers = {} }) {
	const h = { ...headers };
	if (accept) h.Accept = accept;
	if (token) h.Authorization = `Bearer ${token}`;
	let resp;
	try {
		resp = await fetch(url, { method, headers: h, body, cache: 'no-store' });
	} catch (e) {
		throw new ViewerError(
			`Could not reach ${originOf(url)} while ${what}: the server is down, the address is wrong, or it does not accept requests from this page (CORS).`,
			{ detail: String(e && e.message ? e.message : e) });
	}
	if (!resp.ok) {
		const text = await resp.text().catch(() => '');
		const status = `${resp.status} ${resp.statusText || reasonPhrases[resp.status] || ''}`.trim();
		const lead = explanations[resp.status]
			|| (resp.status >= 500 ? 'The server failed.' : 'The server refused the request.');
		throw new ViewerError(`${lead} (${status} while ${what} at ${originOf(url)})`,
			{ status: resp.status, detail: errorBodyText(text) });
	}
	return resp;
}

/**
 * GET a JSON document.
 * @returns {Promise<any>}
 */
export async function getJSON(url, opts) {
	const resp = await request(url, { accept: 'application/fhir+json, application/json', ...opts });
	try {
		return await resp.json();
	} catch {
		throw new ViewerError(`The answer from ${originOf(url)} while ${opts.what} is not JSON.`);
	}
}
