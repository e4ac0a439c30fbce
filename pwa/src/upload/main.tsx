import { StrictMode } from 'react'
import { createRoot } from 'react-dom/client'
import '../styles.css'
import { App } from './App'
import { listenForInstall, registerServiceWorker } from './install'
import { loadTarget } from './target'

listenForInstall()
registerServiceWorker()
// Agent or hub first (./config.json): the queue, started by App, asks which on every call.
void loadTarget().then(() => {
  createRoot(document.getElementById('root')!).render(
    <StrictMode>
      <App />
    </StrictMode>,
  )
})
