// DICOMweb WADO-RS side: series metadata, raw frames (multipart/related)
// and server-rendered images, all through the study's Endpoint address
// with the same bearer token as the search.

import { request, ViewerError } from './http.js';

/** Transfer syntaxes whose frames are raw little-endian pixels. */
const rawSyntaxes = new Set(['1.2.840.10008.1.2', '1.2.840.10008.1.2.1']);

/** The first value of a DICOM JSON attribute. */
function first(ds, tag, dflt) {
	const e = ds[tag];
	return e && Array.isArray(e.Value) && e.Value.length > 0 ? e.Value[0] : dflt;
}

function num(v, dflt) {
	const n = typeof v === 'number' ? v : parseFloat(v);
	return Number.isFinite(n) ? n : dflt;
}

/**
 * @typedef {object} ImageInfo what decoding needs, from the metadata
 * @property {number} rows
 * @property {number} columns
 * @property {number} frames NumberOfFrames
 * @property {number} samples SamplesPerPixel
 * @property {string} photometric
 * @property {number} planar PlanarConfiguration
 * @property {number} bitsAllocated
 * @property {number} bitsStored
 * @property {number} signed PixelRepresentation
 * @property {number} slope
 * @property {number} intercept
 * @property {number|undefined} windowCenter
 * @property {number|undefined} windowWidth
 * @property {number} instanceNumber
 */

/**
 * Reads one instance's image attributes from DICOM JSON.
 * @returns {ImageInfo}
 */
export function imageInfo(ds) {
	return {
		rows: num(first(ds, '00280010'), 0),
		columns: num(first(ds, '00280011'), 0),
		frames: Math.max(1, num(first(ds, '00280008'), 1)),
		samples: num(first(ds, '00280002'), 1),
		photometric: first(ds, '00280004', 'MONOCHROME2'),
		planar: num(first(ds, '00280006'), 0),
		bitsAllocated: num(first(ds, '00280100'), 16),
		bitsStored: num(first(ds, '00280101'), num(first(ds, '00280100'), 16)),
		signed: num(first(ds, '00280103'), 0),
		slope: num(first(ds, '00281053'), 1),
		intercept: num(first(ds, '00281052'), 0),
		windowCenter: num(first(ds, '00281050'), undefined),
		windowWidth: num(first(ds, '00281051'), undefined),
		instanceNumber: num(first(ds, '00200013'), 0),
	};
}

/** The WADO-RS URL of a series. */
export function seriesURL(study, series) {
	return `${study.endpoint}/studies/${study.uid}/series/${series.uid}`;
}

/**
 * Series metadata: image attributes by SOPInstanceUID.
 * @returns {Promise<Map<string, ImageInfo>>}
 */
export async function seriesMetadata(study, series, token) {
	const resp = await request(`${seriesURL(study, series)}/metadata`,
		{ token, accept: 'application/dicom+json', what: 'loading the series metadata' });
	let list;
	try {
		list = await resp.json();
	} catch {
		throw new ViewerError('The series metadata is not DICOM JSON.');
	}
	const out = new Map();
	for (const ds of Array.isArray(list) ? list : []) {
		const sop = first(ds, '00080018');
		if (sop) out.set(sop, imageInfo(ds));
	}
	return out;
}

function indexOf(hay, needle, from) {
	outer: for (let i = from; i <= hay.length - needle.length; i++) {
		for (let j = 0; j < needle.length; j++) {
			if (hay[i + j] !== needle[j]) continue outer;
		}
		return i;
	}
	return -1;
}

/**
 * Splits a multipart/related body into parts.
 * @param {Uint8Array} body
 * @param {string} contentType the response Content-Type, with its boundary
 * @returns {{headers: Record<string,string>, body: Uint8Array}[]}
 */
export function parseMultipart(body, contentType) {
	const m = /boundary="?([^";]+)"?/i.exec(contentType || '');
	if (!m) throw new ViewerError('The frame answer is not multipart/related with a boundary.');
	const enc = new TextEncoder();
	const delim = enc.encode(`--${m[1]}`);
	const parts = [];
	let pos = indexOf(body, delim, 0);
	while (pos >= 0) {
		let start = pos + delim.length;
		if (body[start] === 0x2d && body[start + 1] === 0x2d) break; // closing delimiter
		start = indexOf(body, enc.encode('\r\n'), start) + 2;
		const headerEnd = indexOf(body, enc.encode('\r\n\r\n'), start - 2);
		if (start < 2 || headerEnd < 0) break;
		const headers = {};
		for (const line of new TextDecoder().decode(body.subarray(start, headerEnd)).split('\r\n')) {
			const c = line.indexOf(':');
			if (c > 0) headers[line.slice(0, c).trim().toLowerCase()] = line.slice(c + 1).trim();
		}
		const bodyStart = headerEnd + 4;
		const next = indexOf(body, delim, bodyStart);
		if (next < 0) break;
		let bodyEnd = next;
		if (body[bodyEnd - 2] === 0x0d && body[bodyEnd - 1] === 0x0a) bodyEnd -= 2;
		parts.push({ headers, body: body.subarray(bodyStart, bodyEnd) });
		pos = next;
	}
	return parts;
}

/**
 * Fetches one frame's raw pixels.
 * @returns {Promise<Uint8Array|null>} null when the server sent a
 *   compressed transfer syntax this viewer does not decode
 */
export async function fetchFrame(instanceURL, frame, token) {
	const resp = await request(`${instanceURL}/frames/${frame}`, {
		token,
		accept: 'multipart/related; type="application/octet-stream"',
		what: `loading frame ${frame}`,
	});
	const parts = parseMultipart(new Uint8Array(await resp.arrayBuffer()), resp.headers.get('Content-Type'));
	if (parts.length === 0) throw new ViewerError(`The server sent no data for frame ${frame}.`);
	const ts = /transfer-syntax=([0-9.]+)/.exec(parts[0].headers['content-type'] || '');
	if (ts && !rawSyntaxes.has(ts[1])) return null;
	return parts[0].body;
}

/**
 * Fetches a server-rendered PNG of an instance (or one of its frames).
 * @returns {Promise<ImageBitmap>}
 */
export async function fetchRendered(instanceURL, frame, frames, token) {
	const url = frames > 1 ? `${instanceURL}/frames/${frame}/rendered` : `${instanceURL}/rendered`;
	const resp = await request(url, { token, accept: 'image/png', what: 'loading the rendered image' });
	try {
		return await createImageBitmap(await resp.blob());
	} catch {
		throw new ViewerError('The rendered image could not be decoded.');
	}
}
