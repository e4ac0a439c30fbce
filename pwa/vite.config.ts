/// <reference types="vitest/config" />
import { resolve } from 'node:path'
import react from '@vitejs/plugin-react'
import tailwindcss from '@tailwindcss/vite'
import { defineConfig, type Plugin } from 'vite'
import { VitePWA } from 'vite-plugin-pwa'

// Dev only: where `npm run dev` proxies /api to (an agent, or a hub for the dashboard).
const apiTarget = process.env.RELAYPACS_API_URL ?? 'http://127.0.0.1:8080'

/** The dashboard is not the installable app: no manifest link there (vite-plugin-pwa adds it to every page). */
function dashboardWithoutManifest(): Plugin {
  return {
    name: 'relaypacs:dashboard-without-manifest',
    enforce: 'post',
    apply: 'build',
    transformIndexHtml: {
      order: 'post',
      handler(html, ctx) {
        return ctx.filename.endsWith('dashboard.html') ? html.replace(/<link rel="manifest"[^>]*>/g, '') : html
      },
    },
  }
}

export default defineConfig({
  // Relative asset URLs: the agent serves dist/ at "/", the hub serves it under "/dashboard/".
  base: './',
  plugins: [
    react(),
    tailwindcss(),
    VitePWA({
      registerType: 'autoUpdate',
      injectRegister: false, // registered by hand in src/upload/sw.ts, upload app only
      manifest: {
        name: 'RelayPACS',
        short_name: 'RelayPACS',
        description: 'Send DICOM studies to the central PACS, even on a bad network.',
        id: './',
        start_url: './',
        scope: './',
        display: 'standalone',
        orientation: 'any',
        background_color: '#f8fafc',
        theme_color: '#0f4c81',
        lang: 'en',
        icons: [
          { src: 'icons/icon-192.png', sizes: '192x192', type: 'image/png', purpose: 'any' },
          { src: 'icons/icon-512.png', sizes: '512x512', type: 'image/png', purpose: 'any' },
          { src: 'icons/maskable-512.png', sizes: '512x512', type: 'image/png', purpose: 'maskable' },
        ],
      },
      includeAssets: ['icons/icon.svg', 'icons/apple-touch-icon.png'],
      workbox: {
        // App shell of the upload app only: index.html and what it loads (the dashboard is online-only).
        globPatterns: ['index.html', 'assets/**/*.{js,css,woff2,svg,png}'],
        globIgnores: ['**/dashboard-*.js', '**/dashboard-*.css'],
        navigateFallback: 'index.html',
        navigateFallbackDenylist: [/\/api\//, /\/dashboard/],
        cleanupOutdatedCaches: true,
        clientsClaim: true,
        skipWaiting: true,
        // Never cache the API: no runtimeCaching entry matches /api/, so it always goes to the network.
        runtimeCaching: [],
        // Report notifications: the push and notificationclick handlers (public/push-sw.js).
        importScripts: ['push-sw.js'],
      },
      devOptions: { enabled: false },
    }),
    dashboardWithoutManifest(),
  ],
  build: {
    target: 'es2022',
    rolldownOptions: {
      input: {
        index: resolve(import.meta.dirname, 'index.html'),
        dashboard: resolve(import.meta.dirname, 'dashboard.html'),
      },
    },
  },
  server: {
    proxy: { '/api': { target: apiTarget, changeOrigin: true } },
  },
  test: {
    include: ['src/**/*.test.ts', 'src/**/*.test.tsx'],
    environment: 'node',
  },
})
