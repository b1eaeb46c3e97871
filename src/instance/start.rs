//! The rest of a cold start once the process runs: wait for the port, run the Initializer
//! and the first health check, then freeze (unless requests are waiting for it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Connections;
use super::{ms, us, HookKind, InitError, Instance, Kernel, Lifecycle, StartError};
use crate::runtime_api::RuntimeApi;

impl<K: Kernel> Instance<K> {
    /// Waits for the port, runs the Initializer and freezes: the rest of a cold start. The
    /// lifecycle learns how it ended (requests waiting on it proceed or fail with the error).
    pub async fn boot(self: &Arc<Self>) -> Result<Duration, Arc<StartError>> {
        match self.boot_inner().await {
            Ok(ready) => {
                self.reporting.metrics().cold_start(&self.function.name, ready);
                Ok(ready)
            }
            Err(e) => {
                let e = Arc::new(e);
                self.transition(|l| l.boot_failed(e.clone()));
                Err(e)
            }
        }
    }

    async fn boot_inner(self: &Arc<Self>) -> Result<Duration, StartError> {
        let deadline = Instant::now() + self.function.start_timeout;
        if let Some(api) = self.runtime_api() {
            self.wait_agent(api, deadline).await?;
        } else {
            self.wait_listening(deadline).await?;
        }
        let listening = self.created.elapsed();
        self.start_trace.lock().expect("trace").listening_us = us(listening);
        self.transition(Lifecycle::listening);
        tracing::info!(function = %self.function.name, instance = %self.id, ms = ms(listening), "cold start: listening");
        self.boot_rest().await
    }

    /// A built-in runtime is ready when its agent first asks for work (it loaded the
    /// function); an `init/error` or an exit first fails the start.
    async fn wait_agent(&self, api: &RuntimeApi, deadline: Instant) -> Result<(), StartError> {
        let mut life = self.life.subscribe();
        tokio::select! {
            () = api.polled() => Ok(()),
            e = api.init_failed() => Err(StartError::AgentInit(e)),
            r = life.wait_for(|l| l.exit().is_some()) => {
                let code = r.ok().and_then(|l| l.exit()).unwrap_or(-1);
                // The agent posts its init error, then exits (129): the error says more.
                match api.init_error() {
                    Some(e) => Err(StartError::AgentInit(e)),
                    None => Err(self.exited_error(code)),
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => Err(StartError::Runtime(format!(
                "the {} runtime did not ask for work within {} seconds (fcsup.startTimeout)",
                self.function.runtime,
                self.function.start_timeout.as_secs()
            ))),
        }
    }

    /// A custom runtime is ready when its port accepts a connection.
    async fn wait_listening(&self, deadline: Instant) -> Result<(), StartError> {
        let mut life = self.life.subscribe();
        // Polled: nothing tells a supervisor when a process starts listening. Fine-grained
        // at first (a native server listens within a millisecond), then every 5 ms at most.
        let mut backoff = Duration::from_micros(50);
        let stream = loop {
            let exit = life.borrow_and_update().exit();
            if let Some(code) = exit {
                return Err(self.exited_error(code));
            }
            match self.kernel.try_connect(self.function.port) {
                Ok(Some(s)) => break s,
                Ok(None) | Err(_) if Instant::now() < deadline => {
                    tokio::select! {
                        _ = crate::timer::fine_sleep(backoff) => {}
                        _ = life.changed() => {}
                    }
                    backoff = (backoff * 3 / 2).min(Duration::from_millis(5));
                }
                _ => return Err(StartError::NotListening { port: self.function.port, secs: self.function.start_timeout.as_secs() }),
            }
        };
        if let Ok(s) = Connections::handshake(stream).await {
            self.conns.put(s);
        }
        Ok(())
    }

    /// The Initializer, the first health check and the freeze: the rest of a cold start.
    async fn boot_rest(self: &Arc<Self>) -> Result<Duration, StartError> {
        {
            let mut windows = self.power.lock().await;
            // The cold start and the Initializer are one `initialize` record, counted from the
            // instance's creation (a new cgroup's cpu.stat starts at zero). The window stays
            // open until the freeze confirms (or the stop ends it), so no CPU between here and
            // the freeze goes unbilled.
            windows.start(self.created, self.created_ms, crate::billing::Phase::Initialize);
            let initialized = match &self.function.init_command {
                Some(cmd) => self.run_init_command(cmd).await.map_err(std::sync::Arc::new),
                None if self.function.initializer.is_some() => self.initialize().await,
                None => Ok(()),
            };
            if let (Ok(()), Some(hc)) = (&initialized, &self.function.health_check) {
                self.first_health_check(hc).await?;
            }
            // On a 400/404 the instance stays: the requests that waited fail and the next one
            // retries the Initializer (README, Behaviour decisions); anything else ends the instance.
            if let Err(e) = initialized {
                if !e.retryable() {
                    return Err(StartError::Initializer(e));
                }
            }
        }
        self.start_trace.lock().expect("trace").initialized_us = us(self.created.elapsed());
        self.hazards_baseline();
        // The requests that waited go on from here.
        self.transition(Lifecycle::boot_done);
        if let Some(hc) = &self.function.health_check {
            self.watch_health(hc.clone());
        }
        // Requests that waited for the start run at once; freezing first would only add a
        // freeze and a thaw to their cold start.
        self.clone().freeze_if_idle().await;
        let ready = self.created.elapsed();
        self.start_trace.lock().expect("trace").ready_us = us(ready);
        Ok(ready)
    }

    fn exited_error(&self, code: i32) -> StartError {
        let message = if code > 128 {
            format!("killed by signal {}", code - 128)
        } else {
            std::io::Error::from_raw_os_error(code).to_string().split(" (os error").next().unwrap_or("").to_string()
        };
        let command = match &self.function.builtin {
            Some(_) => format!("the {} runtime", self.function.runtime),
            None => self.function.command.join(" "),
        };
        StartError::Exited { code, message, command }
    }

    /// Runs the Initializer (the power lock held) and tells the lifecycle how it went.
    pub(super) async fn initialize(&self) -> Result<(), Arc<InitError>> {
        let outcome = match self.call_hook(HookKind::Initialize).await {
            Ok(status) if status.is_success() => Ok(()),
            Ok(status) => Err(Arc::new(InitError::Status(status.as_u16()))),
            Err(e) => Err(Arc::new(InitError::Hook(e))),
        };
        if let Err(e) = &outcome {
            tracing::warn!(function = %self.function.name, instance = %self.id, "{e}");
        }
        self.transition(|l| l.initialized(outcome.clone()));
        outcome
    }
}
