// Pixel decoding and window/level for uncompressed frames.

/**
 * @typedef {object} Decoded
 * @property {number} width
 * @property {number} height
 * @property {Float32Array|null} values modality values (grayscale), or null for color
 * @property {Uint8ClampedArray|null} rgba color pixels, or null for grayscale
 * @property {number} min
 * @property {number} max
 * @property {boolean} invert MONOCHROME1
 */

/**
 * Decodes a raw little-endian frame with the instance's image attributes.
 * @param {Uint8Array} bytes
 * @param {import('./dicomweb.js').ImageInfo} info
 * @returns {Decoded}
 */
export function decodeFrame(bytes, info) {
	const { rows: h, columns: w } = info;
	const n = w * h;
	if (!n) throw new Error('the metadata has no image size (Rows, Columns)');
	if (info.samples === 3) {
		if (info.bitsAllocated !== 8 || bytes.length < n * 3) throw new Error('unsupported color pixel layout');
		const rgba = new Uint8ClampedArray(n * 4);
		for (let i = 0; i < n; i++) {
			const [r, g, b] = info.planar === 1
				? [bytes[i], bytes[n + i], bytes[2 * n + i]]
				: [bytes[3 * i], bytes[3 * i + 1], bytes[3 * i + 2]];
			rgba.set([r, g, b, 255], 4 * i);
		}
		return { width: w, height: h, values: null, rgba, min: 0, max: 255, invert: false };
	}
	const bpp = info.bitsAllocated / 8;
	if ((bpp !== 1 && bpp !== 2 && bpp !== 4) || bytes.length < n * bpp) {
		throw new Error(`frame has ${bytes.length} bytes, want ${n * bpp} (${w}×${h}, ${info.bitsAllocated} bits)`);
	}
	const dv = new DataView(bytes.buffer, bytes.byteOffset, n * bpp);
	const stored = Math.min(info.bitsStored || info.bitsAllocated, info.bitsAllocated);
	const shift = 32 - stored;
	const values = new Float32Array(n);
	let min = Infinity;
	let max = -Infinity;
	for (let i = 0; i < n; i++) {
		let v = bpp === 1 ? dv.getUint8(i) : bpp === 2 ? dv.getUint16(2 * i, true) : dv.getUint32(4 * i, true);
		// Keep BitsStored bits, sign-extended when PixelRepresentation is 1.
		v = info.signed ? (v << shift) >> shift : stored < 32 ? v & (2 ** stored - 1) : v;
		v = v * info.slope + info.intercept;
		values[i] = v;
		if (v < min) min = v;
		if (v > max) max = v;
	}
	return { width: w, height: h, values, rgba: null, min, max, invert: info.photometric === 'MONOCHROME1' };
}

/**
 * Applies a linear window (DICOM PS3.3 C.11.2.1.2) and returns RGBA pixels.
 * @param {Decoded} img
 * @param {number} center
 * @param {number} width
 * @returns {ImageData}
 */
export function windowed(img, center, width) {
	if (img.rgba) return new ImageData(img.rgba, img.width, img.height);
	const out = new Uint8ClampedArray(img.width * img.height * 4);
	const w = Math.max(1, width);
	const lo = center - 0.5 - (w - 1) / 2;
	const hi = center - 0.5 + (w - 1) / 2;
	for (let i = 0; i < img.values.length; i++) {
		const x = img.values[i];
		let y = x <= lo ? 0 : x > hi ? 255 : ((x - (center - 0.5)) / (w - 1) + 0.5) * 255;
		if (img.invert) y = 255 - y;
		out[4 * i] = out[4 * i + 1] = out[4 * i + 2] = y;
		out[4 * i + 3] = 255;
	}
	return new ImageData(out, img.width, img.height);
}
