// The page: server choice, study list, series list, image view.

import { searchStudies, readPatient } from './fhir.js';
import { seriesMetadata, seriesURL, fetchFrame, fetchRendered } from './dicomweb.js';
import { decodeFrame, windowed } from './pixels.js';
import { authorize, completeLaunch, continueWithImagingServer, currentSession, endSession } from './smart.js';
import { ViewerError } from './http.js';

const $ = (id) => document.getElementById(id);

/**
 * A server entry: plain ({fhir, patient?}: the demo routes, no login),
 * SMART to connect to ({smart}) or a connected SMART session ({session}).
 * @typedef {{label: string, fhir?: string, patient?: string,
 *   smart?: import('./smart.js').SmartEntry,
 *   session?: import('./smart.js').Session}} Server
 */

/** Built-in servers, used when config.json cannot be read. */
const fallbackServers = [
	{ label: 'Demo: open route (no token, every study)', fhir: '../open/fhir' },
	{ label: 'Demo: hard-coded patient', fhir: '../hardcoded-patient/fhir', patient: '87a339d0-8cae-418e-89c7-8651e6aab3c6' },
];

const state = {
	/** @type {Server[]} */ servers: [],
	/** @type {Server|null} */ server: null,
	studies: [],
	study: null,
	series: null,
	/** @type {Map<string, import('./dicomweb.js').ImageInfo>} */ meta: new Map(),
	index: 0,
	frame: 1,
	rendered: false,
	/** window/level of the current series; null until the first frame */
	wl: null,
	range: null,
	decoded: null,
	cache: new Map(),
	gen: 0,
};

// ---- messages ----------------------------------------------------------

function showError(err) {
	const box = $('error');
	box.replaceChildren();
	const strong = document.createElement('strong');
	strong.textContent = err instanceof ViewerError ? err.message : `Something went wrong: ${err && err.message ? err.message : err}`;
	box.append(strong);
	if (err && err.detail) {
		const d = document.createElement('div');
		d.className = 'detail';
		d.textContent = `Server says: ${err.detail}`;
		box.append(d);
	}
	box.hidden = false;
	status('');
	if (!(err instanceof ViewerError)) console.error(err);
}

function clearError() {
	$('error').hidden = true;
	$('error').replaceChildren();
}

function status(text) {
	$('status').textContent = text;
}

function cell(tr, text) {
	const td = document.createElement('td');
	td.textContent = text;
	tr.append(td);
}

// ---- servers -----------------------------------------------------------

/** The token for search and WADO: the imaging server's own after a dual launch, else the EHR's. */
function token() {
	const s = state.server && state.server.session;
	return s ? s.imagingToken || s.accessToken : undefined;
}

async function loadConfig() {
	try {
		const resp = await fetch('config.json', { cache: 'no-store' });
		if (!resp.ok) return fallbackServers;
		const conf = await resp.json();
		return Array.isArray(conf.servers) && conf.servers.length ? conf.servers : fallbackServers;
	} catch {
		return fallbackServers;
	}
}

/** Server entries given in the page URL (see README.md). */
function serversFromURL(params) {
	const out = [];
	if (params.get('fhir')) {
		out.push({ label: params.get('label') || params.get('fhir'), fhir: params.get('fhir'), patient: params.get('patient') || '' });
	}
	if (params.get('iss')) {
		out.push({
			label: params.get('label') || `SMART: ${params.get('iss')}`,
			smart: {
				iss: params.get('iss'),
				clientId: params.get('client_id') || 'smart-imaging-viewer',
				scope: params.get('scope') || '',
				imaging: params.get('imaging') || '',
				launch: params.get('launch') || '',
				imagingClientId: params.get('imaging_client_id') || '',
				imagingScope: params.get('imaging_scope') || '',
			},
		});
	}
	return out;
}

function renderServerList() {
	const sel = $('server');
	sel.replaceChildren();
	state.servers.forEach((s, i) => {
		const o = document.createElement('option');
		o.value = String(i);
		o.textContent = s.session ? `${s.label} (connected)` : s.label;
		sel.append(o);
	});
	sel.value = String(state.servers.indexOf(state.server));
}

function resolve(url) {
	return new URL(url, location.href).href.replace(/\/+$/, '');
}

async function selectServer(server) {
	state.server = server;
	renderServerList();
	clearError();
	hide('studies-panel', 'series-panel', 'image-panel', 'patient');
	$('connect').hidden = !server.smart;
	$('disconnect').hidden = !server.session;
	if (server.smart) {
		status(`Press “Connect with SMART” to log in at ${server.smart.iss}.`);
		return;
	}
	let fhirBase;
	let patient;
	if (server.session) {
		fhirBase = server.session.imaging;
		patient = server.session.patient;
		showPatient(server.session);
	} else {
		fhirBase = resolve(server.fhir);
		patient = server.patient;
	}
	const gen = ++state.gen;
	status('Searching for imaging studies…');
	try {
		const studies = await searchStudies({ fhirBase, patient, token: token() });
		if (gen !== state.gen) return;
		state.studies = studies;
		renderStudies();
		status(`${studies.length} ${studies.length === 1 ? 'study' : 'studies'}.`);
	} catch (e) {
		if (gen === state.gen) showError(e);
	}
}

async function showPatient(session) {
	const box = $('patient');
	box.textContent = `Patient ${session.patient}`;
	box.hidden = false;
	try {
		const p = await readPatient(session.iss, session.patient, session.accessToken);
		box.textContent = `Patient: ${p.name}${p.birthDate ? `, born ${p.birthDate}` : ''}`;
	} catch (e) {
		box.textContent = `Patient ${session.patient} (could not read the patient from the EHR: ${e.message})`;
	}
}

function hide(...ids) {
	for (const id of ids) $(id).hidden = true;
}

// ---- studies and series ------------------------------------------------

function renderStudies() {
	const body = $('studies').tBodies[0];
	body.replaceChildren();
	for (const st of state.studies) {
		const tr = document.createElement('tr');
		tr.dataset.uid = st.uid;
		cell(tr, st.date);
		cell(tr, st.description);
		cell(tr, st.modalities.join(', '));
		cell(tr, String(st.numberOfSeries));
		cell(tr, String(st.numberOfInstances));
		cell(tr, st.patient);
		tr.addEventListener('click', () => openStudy(st, tr));
		body.append(tr);
	}
	$('no-studies').hidden = state.studies.length > 0;
	$('studies-panel').hidden = false;
}

function select(tr) {
	for (const x of tr.parentElement.children) x.classList.toggle('selected', x === tr);
}

function openStudy(study, tr) {
	clearError();
	select(tr);
	state.study = study;
	hide('image-panel');
	if (!study.endpoint) {
		showError(new ViewerError('The server gave no WADO-RS Endpoint for this study, so its images cannot be retrieved.'));
		return;
	}
	$('series-study').textContent = `of ${study.description || study.uid}`;
	const body = $('series').tBodies[0];
	body.replaceChildren();
	for (const se of study.series) {
		const row = document.createElement('tr');
		row.dataset.uid = se.uid;
		cell(row, String(se.number || ''));
		cell(row, se.modality);
		cell(row, se.description);
		cell(row, se.bodySite);
		cell(row, String(se.numberOfInstances));
		row.addEventListener('click', () => openSeries(se, row));
		body.append(row);
	}
	$('series-panel').hidden = false;
}

async function openSeries(series, tr) {
	clearError();
	select(tr);
	state.series = series;
	state.index = 0;
	state.frame = 1;
	state.wl = null;
	state.range = null;
	state.decoded = null;
	state.meta = new Map();
	state.cache.clear();
	const canvas = $('canvas');
	canvas.dataset.state = 'loading';
	$('image-title').textContent = `${series.modality} ${series.description}`.trim();
	$('image-panel').hidden = false;
	const gen = ++state.gen;
	status('Loading series metadata…');
	try {
		state.meta = await seriesMetadata(state.study, series, token());
	} catch (e) {
		if (gen !== state.gen) return;
		// Without metadata the server-rendered images still work.
		showError(e);
	}
	if (gen !== state.gen) return;
	if (series.instances.length === 0) {
		// The ImagingStudy listed no instances: take them from the metadata.
		series.instances = [...state.meta.entries()].map(([uid, i]) => ({ uid, number: i.instanceNumber }))
			.sort((a, b) => a.number - b.number);
	}
	await showImage();
}

// ---- images ------------------------------------------------------------

function frames() {
	const inst = state.series.instances[state.index];
	const info = inst && state.meta.get(inst.uid);
	return info ? info.frames : 1;
}

function updateControls() {
	const n = state.series.instances.length;
	const f = frames();
	$('image-pos').textContent = `Image ${n ? state.index + 1 : 0} / ${n}`;
	$('frame-pos').textContent = `Frame ${state.frame} / ${f}`;
	$('prev-image').disabled = state.index <= 0;
	$('next-image').disabled = state.index >= n - 1;
	$('prev-frame').disabled = state.frame <= 1;
	$('next-frame').disabled = state.frame >= f;
	const gray = Boolean(!state.rendered && state.wl && state.decoded && state.decoded.values);
	for (const id of ['wl-center', 'wl-width', 'wl-reset']) $(id).disabled = !gray;
	$('wl-value').textContent = gray ? `L ${Math.round(state.wl.center)} / W ${Math.round(state.wl.width)}` : '';
}

async function showImage() {
	const inst = state.series.instances[state.index];
	updateControls();
	if (!inst) {
		showError(new ViewerError('This series has no instances to show.'));
		return;
	}
	const canvas = $('canvas');
	canvas.dataset.state = 'loading';
	const gen = ++state.gen;
	const info = state.meta.get(inst.uid);
	const url = `${seriesURL(state.study, state.series)}/instances/${inst.uid}`;
	const f = state.frame;
	status(`Loading image ${state.index + 1}${frames() > 1 ? `, frame ${f}` : ''}…`);
	try {
		let note = '';
		let decoded = null;
		if (!state.rendered && info) {
			const key = `${inst.uid}/${f}`;
			decoded = state.cache.get(key) || null;
			if (!decoded) {
				const bytes = await fetchFrame(url, f, token());
				if (bytes) {
					decoded = decodeFrame(bytes, info);
					state.cache.set(key, decoded);
				} else {
					note = 'The server sent compressed pixels: showing its rendered image instead.';
				}
			}
		} else if (!state.rendered) {
			note = 'No metadata for this instance: showing the server-rendered image.';
		}
		if (gen !== state.gen) return;
		if (decoded) {
			state.decoded = decoded;
			if (!state.wl && decoded.values) initWindow(decoded, info);
			drawDecoded();
		} else {
			state.decoded = null;
			const bitmap = await fetchRendered(url, f, frames(), token());
			if (gen !== state.gen) return;
			draw(bitmap);
		}
		$('image-note').textContent = note || (decoded
			? 'Pixels decoded in the page: drag on the image or use the sliders to change window/level.'
			: 'Rendered by the server (PNG).');
		canvas.dataset.image = `${state.index + 1}/${f}`;
		canvas.dataset.state = 'ready';
		updateControls();
		status('');
	} catch (e) {
		if (gen !== state.gen) return;
		canvas.dataset.state = 'error';
		showError(e);
	}
}

function initWindow(decoded, info) {
	const lo = decoded.min;
	const hi = decoded.max > decoded.min ? decoded.max : decoded.min + 1;
	state.range = { lo, hi };
	const width = info.windowWidth > 0 ? info.windowWidth : hi - lo;
	const center = info.windowCenter !== undefined ? info.windowCenter : (hi + lo) / 2;
	state.wl = { center, width, initial: { center, width } };
	const c = $('wl-center');
	const w = $('wl-width');
	c.min = String(Math.floor(Math.min(lo, center)));
	c.max = String(Math.ceil(Math.max(hi, center)));
	w.min = '1';
	w.max = String(Math.ceil(Math.max(2 * (hi - lo), width)));
	syncSliders();
}

function syncSliders() {
	$('wl-center').value = String(state.wl.center);
	$('wl-width').value = String(state.wl.width);
}

function drawDecoded() {
	const d = state.decoded;
	const img = d.values ? windowed(d, state.wl.center, state.wl.width) : windowed(d, 0, 0);
	const off = new OffscreenCanvas(d.width, d.height);
	off.getContext('2d').putImageData(img, 0, 0);
	draw(off);
	updateControls();
}

/** Draws an image scaled to fit the canvas, keeping its aspect ratio. */
function draw(source) {
	const canvas = $('canvas');
	const ctx = canvas.getContext('2d');
	ctx.fillStyle = '#000';
	ctx.fillRect(0, 0, canvas.width, canvas.height);
	const s = Math.min(canvas.width / source.width, canvas.height / source.height);
	const w = source.width * s;
	const h = source.height * s;
	ctx.imageSmoothingEnabled = s < 4;
	ctx.drawImage(source, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
}

function step(di, df) {
	if (!state.series) return;
	const n = state.series.instances.length;
	if (di) {
		const i = state.index + di;
		if (i < 0 || i >= n) return;
		state.index = i;
		state.frame = 1;
	} else {
		const f = state.frame + df;
		if (f < 1 || f > frames()) return;
		state.frame = f;
	}
	showImage();
}

function setWindow(center, width) {
	if (!state.wl || !state.decoded || !state.decoded.values) return;
	state.wl.center = center;
	state.wl.width = Math.max(1, width);
	syncSliders();
	drawDecoded();
}

function wireImageControls() {
	$('prev-image').addEventListener('click', () => step(-1, 0));
	$('next-image').addEventListener('click', () => step(1, 0));
	$('prev-frame').addEventListener('click', () => step(0, -1));
	$('next-frame').addEventListener('click', () => step(0, 1));
	$('wl-center').addEventListener('input', (e) => setWindow(Number(e.target.value), state.wl.width));
	$('wl-width').addEventListener('input', (e) => setWindow(state.wl.center, Number(e.target.value)));
	$('wl-reset').addEventListener('click', () => state.wl && setWindow(state.wl.initial.center, state.wl.initial.width));
	$('rendered').addEventListener('change', (e) => {
		state.rendered = e.target.checked;
		if (state.series) showImage();
	});
	document.addEventListener('keydown', (e) => {
		if ($('image-panel').hidden || ['INPUT', 'SELECT', 'TEXTAREA'].includes(e.target.tagName)) return;
		const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
		if (moves[e.key]) {
			e.preventDefault();
			step(...moves[e.key]);
		}
	});
	// Drag: left/right changes the window width, up/down the level.
	const canvas = $('canvas');
	let drag = null;
	canvas.addEventListener('pointerdown', (e) => {
		if (!state.wl || !state.decoded || !state.decoded.values || state.rendered) return;
		drag = { x: e.clientX, y: e.clientY, center: state.wl.center, width: state.wl.width };
		canvas.setPointerCapture(e.pointerId);
	});
	canvas.addEventListener('pointermove', (e) => {
		if (!drag) return;
		const k = (state.range.hi - state.range.lo) / 256;
		setWindow(drag.center + (e.clientY - drag.y) * k, drag.width + (e.clientX - drag.x) * k);
	});
	const stop = () => { drag = null; };
	canvas.addEventListener('pointerup', stop);
	canvas.addEventListener('pointercancel', stop);
}

// ---- start -------------------------------------------------------------

async function start() {
	wireImageControls();
	const params = new URLSearchParams(location.search);
	const configured = await loadConfig();
	const fromURL = serversFromURL(params);
	state.servers = [...fromURL, ...configured];
	$('server').addEventListener('change', (e) => selectServer(state.servers[Number(e.target.value)]));
	$('connect').addEventListener('click', async () => {
		clearError();
		status('Redirecting to the EHR to log in…');
		try {
			await authorize({ label: state.server.label, ...state.server.smart });
		} catch (e) {
			showError(e);
		}
	});
	$('disconnect').addEventListener('click', () => {
		endSession();
		state.servers = state.servers.filter((s) => !s.session);
		selectServer(state.servers[0]);
	});

	let session = null;
	let launchError = null;
	try {
		session = await completeLaunch(params);
		if (session) history.replaceState(null, '', location.pathname);
	} catch (e) {
		launchError = e;
		history.replaceState(null, '', location.pathname);
	}
	session = session || (launchError ? null : currentSession());
	if (session) {
		try {
			status('Asking the imaging server how to authorize…');
			if (await continueWithImagingServer(session)) {
				status('Redirecting to the imaging server to authorize imaging access…');
				return;
			}
		} catch (e) {
			endSession();
			await selectServer(state.servers[0]);
			showError(e);
			return;
		}
		const entry = { label: session.label, session };
		state.servers.unshift(entry);
		await selectServer(entry);
		return;
	}
	const first = state.servers[0];
	if (first.smart && first.smart.launch && !launchError) {
		// EHR launch: go straight to the EHR.
		state.server = first;
		renderServerList();
		$('connect').click();
		return;
	}
	await selectServer(first);
	if (launchError) showError(launchError);
}

// Nothing fails silently: an unexpected error is shown like any other.
window.addEventListener('unhandledrejection', (e) => showError(e.reason));
window.addEventListener('error', (e) => showError(e.error || e.message));

start().catch(showError);
