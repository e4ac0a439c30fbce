// Draws the app icons (PNG) without dependencies: `npm run icons` writes public/icons/.
// The shape: a white arrow going up into a tray, on the brand blue. icon.svg is the same drawing.
import { mkdirSync, writeFileSync } from 'node:fs'
import { deflateSync } from 'node:zlib'

const OUT = new URL('../public/icons/', import.meta.url)
const BLUE = [0x0f, 0x4c, 0x81]
const WHITE = [0xff, 0xff, 0xff]

const CRC = new Int32Array(256).map((_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  return c
})
function crc32(buf) {
  let c = -1
  for (const b of buf) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ -1) >>> 0
}
function chunk(type, data) {
  const len = Buffer.alloc(4)
  len.writeUInt32BE(data.length)
  const td = Buffer.concat([Buffer.from(type), data])
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(td))
  return Buffer.concat([len, td, crc])
}
function png(size, pixel) {
  const raw = Buffer.alloc(size * (size * 4 + 1))
  for (let y = 0; y < size; y++) {
    raw[y * (size * 4 + 1)] = 0
    for (let x = 0; x < size; x++) {
      const [r, g, b, a] = pixel(x + 0.5, y + 0.5)
      const o = y * (size * 4 + 1) + 1 + x * 4
      raw[o] = r
      raw[o + 1] = g
      raw[o + 2] = b
      raw[o + 3] = a
    }
  }
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(size, 0)
  ihdr.writeUInt32BE(size, 4)
  ihdr[8] = 8
  ihdr[9] = 6
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

// The symbol in a 0..100 box.
function inSymbol(u, v) {
  const head = v >= 18 && v <= 44 && Math.abs(u - 50) <= (v - 18) * 0.85 // arrow head
  const shaft = u >= 43 && u <= 57 && v >= 44 && v <= 66
  const tray = v >= 72 && v <= 80 && u >= 22 && u <= 78
  const sides = v >= 58 && v <= 80 && ((u >= 22 && u <= 30) || (u >= 70 && u <= 78))
  return head || shaft || tray || sides
}

function icon(size, { maskable }) {
  const radius = maskable ? 0 : size * 0.2
  const scale = maskable ? 0.62 : 0.8 // the maskable safe zone is the inner 80% circle
  return png(size, (x, y) => {
    // rounded square background
    const rx = Math.max(radius - x, 0, x - (size - radius))
    const ry = Math.max(radius - y, 0, y - (size - radius))
    if (radius && rx * rx + ry * ry > radius * radius) return [0, 0, 0, 0]
    const u = ((x / size - 0.5) / scale) * 100 + 50
    const v = ((y / size - 0.5) / scale) * 100 + 50
    return [...(inSymbol(u, v) ? WHITE : BLUE), 255]
  })
}

const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100" role="img" aria-label="RelayPACS">
  <rect width="100" height="100" rx="20" fill="#0f4c81"/>
  <g transform="translate(50 50) scale(0.8) translate(-50 -50)" fill="#fff">
    <path d="M50 18 L72.1 44 L57 44 L57 66 L43 66 L43 44 L27.9 44 Z"/>
    <path d="M22 58 H30 V72 H70 V58 H78 V80 H22 Z"/>
  </g>
</svg>
`

mkdirSync(OUT, { recursive: true })
writeFileSync(new URL('icon-192.png', OUT), icon(192, { maskable: false }))
writeFileSync(new URL('icon-512.png', OUT), icon(512, { maskable: false }))
writeFileSync(new URL('maskable-512.png', OUT), icon(512, { maskable: true }))
writeFileSync(new URL('apple-touch-icon.png', OUT), icon(180, { maskable: true }))
writeFileSync(new URL('icon.svg', OUT), svg)
console.log('icons written to public/icons/')
