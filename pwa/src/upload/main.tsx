import { StrictMode } from 'react'
import { createRoot } from 'react-dom/client'
import '../styles.css'
import { listenForInstall, registerServiceWorker } from './install'
import { loadTarget } from './target'

listenForInstall()
registerServiceWorker()
// Agent or hub first (./config.json): the queue is wired to one or the other when App loads.
void loadTarget().then(async () => {
  const { App } = await import('./App')
  createRoot(document.getElementById('root')!).render(
    <StrictMode>
      <App />
    </StrictMode>,
  )
})
