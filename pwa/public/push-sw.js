/* Report notifications (Web Push), loaded into the app's service worker (workbox importScripts).
 * The payload holds no patient data: an opaque report id and its status; the app shows the
 * report after sign-in. */
self.addEventListener('push', (event) => {
  let data = {}
  try {
    data = event.data ? event.data.json() : {}
  } catch (e) {
    data = {}
  }
  const what = data.status === 'amended' ? 'An amended report' : data.status === 'preliminary' ? 'A preliminary report' : 'A report'
  event.waitUntil(
    self.registration.showNotification('RelayPACS: report ready', {
      body: `${what} is ready. Open RelayPACS to read it.`,
      tag: `report-${data.id ?? 'new'}`,
      icon: 'icons/icon-192.png',
      data: { url: './#/' },
    }),
  )
})

self.addEventListener('notificationclick', (event) => {
  event.notification.close()
  const url = new URL((event.notification.data && event.notification.data.url) || './', self.registration.scope).href
  event.waitUntil(
    self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then((windows) => {
      for (const w of windows) {
        if ('focus' in w) {
          if ('navigate' in w) w.navigate(url).catch(() => undefined)
          return w.focus()
        }
      }
      return self.clients.openWindow(url)
    }),
  )
})
