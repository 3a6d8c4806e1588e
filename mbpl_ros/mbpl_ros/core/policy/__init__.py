"""
The global neural-network policy of MDGPS, split by who needs it.

Mirror-descent guided policy search (Montgomery & Levine 2016) alternates a C-step, in
which LQR improves each condition's linear-Gaussian controller under a KL bound to the
policy's linearisation (core.mdgps.linearize_policy), and an S-step, in which a single
state-feedback policy π_θ(u|x) = N(μ_θ(x), diag(σ²)) is fitted to all controllers.

* :mod:`.settings` — PolicySettings, the network and S-step hyper-parameters;
* :mod:`.network` — Policy, the nn.Module (with its optional fixed action base, e.g. the
  robot's gravity torque, SerialChainGravity), and its training checkpoints;
* :mod:`.training` — train_policy, the S-step;
* :mod:`.deploy` — the TorchScript export and its loader: what a robot imports (no
  training code, no dynamics, no GMM); core.controller.PolicySampler samples it.

Import the modules themselves; this package module imports none of them, so that loading
a policy on the robot loads nothing else.
"""
