"""Spin chains against exact diagonalisation and closed forms; RBM tomography and variational ground states."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import physgen
from physgen.quantum import (
    configurations,
    fidelity,
    ground_state,
    heisenberg,
    histogram_state,
    kl_divergence,
    marshall_signs,
    optimise_ground_state,
    overlap,
    sample_measurements,
    sign_rule,
    state_vector,
    tfim,
    tomography_report,
    xxz,
    zz_correlations,
    zz_correlations_from_samples,
)
from physgen.surrogates import create


def test_tfim_open_chain_energy_from_the_issue():
    assert ground_state(tfim(10, J=1.0, h=1.0, periodic=False))[0] == pytest.approx(-12.381490, abs=1e-6)


@pytest.mark.parametrize("n, g", [(8, 1.0), (10, 0.5), (6, 2.0)])
def test_periodic_tfim_matches_free_fermions(n, g):
    # even-parity sector: E₀ = −Σ_m √(1 + g² + 2g cos((2m+1)π/n)) for J = 1, h = g
    k = (2 * np.arange(n) + 1) * np.pi / n
    exact = -np.sqrt(1 + g * g + 2 * g * np.cos(k)).sum()
    assert ground_state(tfim(n, J=1.0, h=g, periodic=True))[0] == pytest.approx(exact, abs=1e-9)


def test_heisenberg_closed_forms_and_marshall_sign():
    # 2 spins: singlet, σ⃗·σ⃗ = −3; 4-site ring: E₀ = −8 (S⃗·S⃗ ring E₀ = −2)
    assert ground_state(heisenberg(2, periodic=False))[0] == pytest.approx(-3.0)
    assert ground_state(heisenberg(4, periodic=True))[0] == pytest.approx(-8.0)
    # the XXZ chain at J_z = 0 (XX model) maps to free fermions: open chain of n sites,
    # E₀ = Σ over negative single-particle energies 4 cos(πk/(n+1))
    n = 8
    eps = 4 * np.cos(np.pi * np.arange(1, n + 1) / (n + 1))
    assert ground_state(xxz(n, Jxy=1.0, Jz=0.0))[0] == pytest.approx(eps[eps < 0].sum(), abs=1e-9)
    # Marshall: the Heisenberg ground state times the sign rule is non-negative
    _, psi = ground_state(heisenberg(8, periodic=True))
    signed = psi * marshall_signs(8)
    signed *= np.sign(signed[np.argmax(np.abs(signed))])
    assert signed.min() > -1e-9


def test_sz_sector_gives_the_same_heisenberg_ground_state():
    chain = heisenberg(10, periodic=True)
    e_full, psi_full = ground_state(chain)
    e_sector, psi_sector = ground_state(chain, n_up=5)
    assert e_sector == pytest.approx(e_full, abs=1e-9)
    assert abs(np.dot(psi_full[chain.sector(5)], psi_sector)) == pytest.approx(1.0, abs=1e-8)
    with pytest.raises(physgen.errors.InvalidDataError, match="conserves"):
        tfim(4).matrix(n_up=2)


def test_metropolis_sr_on_a_periodic_chain():
    # the Monte Carlo path: free-fermion energy of the periodic TFIM as reference
    n = 12
    k = (2 * np.arange(n) + 1) * np.pi / n
    e0 = -np.sqrt(2 + 2 * np.cos(k)).sum()
    result = optimise_ground_state(tfim(n, periodic=True), alpha=1, iterations=150, lr=0.05, diag_shift=0.01,
                                   sampler="metropolis", n_samples=512, exact_energy=e0, final_samples=8192)
    assert result.errors[-1] > 0  # a Monte Carlo estimate carries its error
    assert abs(result.energy - e0) < 5 * result.errors[-1] + 2e-3 * abs(e0)


def test_hamiltonian_is_hermitian_and_sparse():
    h = tfim(6, periodic=True).matrix()
    assert abs(h - h.T).max() == 0 and h.nnz == 64 * (1 + 6)
    hx = heisenberg(6).matrix()
    assert abs(hx - hx.T).max() == 0


def test_measurements_follow_born_rule_and_round_trip_as_text(tmp_path):
    _, psi = ground_state(tfim(4))
    data = sample_measurements(psi, 20000, seed=1)
    counts = np.bincount((data.x.numpy().astype(int) * [8, 4, 2, 1]).sum(1), minlength=16)
    assert chisquare(counts, 20000 * psi**2).pvalue > 0.001
    physgen.write(data, tmp_path / "samples.txt")
    back = physgen.read(tmp_path / "samples.txt")
    assert torch.equal(back.x, data.x) and back.schema.kind == "spins"
    assert (tmp_path / "samples.txt").read_text().splitlines()[0].count(" ") == 3


def test_fidelity_kl_and_correlations_basic_identities():
    _, psi = ground_state(tfim(6))
    assert fidelity(psi, psi) == pytest.approx(1.0) and kl_divergence(psi, psi) == pytest.approx(0.0, abs=1e-12)
    assert overlap(psi, -psi) == pytest.approx(1.0)
    c = zz_correlations(psi)
    assert np.allclose(np.diag(c), 1.0) and np.allclose(c, c.T)
    samples = sample_measurements(psi, 40000, seed=2).x.numpy()
    assert np.abs(zz_correlations_from_samples(samples) - c).max() < 4 / math.sqrt(40000) * 2


def test_rbm_exact_normalisation_and_gibbs_sampler():
    rbm = create("rbm", n_hidden=3, init_std=0.8)
    data = sample_measurements(ground_state(tfim(4))[1], 100, seed=0)
    rbm.fit(data, epochs=1, progress=False)
    # log Z by enumeration against a brute-force sum over visible AND hidden states
    v, h = torch.from_numpy(configurations(4)).float(), torch.from_numpy(configurations(3)).float()
    with torch.no_grad():
        energy = -(v @ rbm.b)[:, None] - (h @ rbm.c)[None, :] - v @ rbm.W.T @ h.T
        brute = torch.logsumexp(-energy.reshape(-1), 0)
        assert float(rbm.log_z()) == pytest.approx(float(brute), abs=1e-5)
        p = torch.exp(rbm.log_probabilities()).double().numpy()
        chains = rbm.gibbs(torch.bernoulli(torch.full((20000, 4), 0.5)), 200)
    counts = np.bincount((chains.numpy().astype(int) * [8, 4, 2, 1]).sum(1), minlength=16)
    assert chisquare(counts, 20000 * p / p.sum()).pvalue > 0.001


def test_tomography_beats_the_histogram_on_a_small_chain():
    # 8 spins (256 states), 1,000 measurements: the histogram misses many configurations
    _, psi = ground_state(tfim(8))
    data = sample_measurements(psi, 1000, seed=3)
    rbm = create("rbm", alpha=1.0)
    rbm.fit(data, epochs=300, batch_size=1000, lr=0.03, schedule="constant", val_fraction=0.0, progress=False, seed=0)
    report = tomography_report(rbm, psi, data)
    assert report["fidelity"] > report["histogram_fidelity"] + 0.05 and report["fidelity"] > 0.98
    assert report["kl"] < kl_divergence(psi, histogram_state(data) + 1e-12)
    # two-point correlations of the reconstructed state: as good as the samples' own estimate
    exact = zz_correlations(psi)
    from_rbm = np.abs(zz_correlations(rbm.wavefunction()) - exact).mean()
    from_samples = np.abs(zz_correlations_from_samples(data.x.numpy()) - exact).mean()
    assert from_rbm < 1.5 * from_samples + 0.005


@pytest.mark.parametrize("gradient", ["cd", "pcd"])
def test_contrastive_divergence_learns_too(gradient):
    _, psi = ground_state(tfim(6))
    data = sample_measurements(psi, 3000, seed=4)
    rbm = create("rbm", alpha=1.0, gradient=gradient, k=5, n_chains=200)
    rbm.fit(data, epochs=40, batch_size=100, lr=0.01, progress=False, seed=0)
    assert tomography_report(rbm, psi)["fidelity"] > 0.95


def test_stochastic_reconfiguration_reaches_the_ground_state_of_a_small_chain():
    chain = tfim(6)
    e0, psi0 = ground_state(chain)
    result = optimise_ground_state(chain, alpha=1, iterations=200, lr=0.05, exact_energy=e0)
    assert result.energies[0] > result.energy  # SR lowers the energy
    assert result.relative_error < 1e-4
    assert result.energy >= e0 - 1e-9  # variational
    assert overlap(state_vector(result.model, chain), psi0) > 0.999
    assert result.variances[-1] < 1e-2 * result.variances[0]


def test_sr_with_marshall_sign_on_a_heisenberg_ring():
    chain = heisenberg(8, periodic=True)
    e0, psi0 = ground_state(chain)
    # shared weights sum their log-derivatives over n translations: a smaller step
    result = optimise_ground_state(chain, alpha=2, iterations=300, lr=0.02, translation_invariant=True, exact_energy=e0)
    assert result.relative_error < 2e-3 and result.energy >= e0 - 1e-9
    assert overlap(state_vector(result.model, chain), psi0) > 0.99


def test_spin_chain_benchmark_suite(tmp_path, caplog):
    from physgen.bench import run_suite

    suite = {
        "name": "spins-test",
        "datasets": [{"name": "tfim6", "source": "quantum:tfim", "read": {"n": 6, "samples": 3000}, "split": [0.8, 0.2]}],
        "surrogates": [{"family": "rbm", "train": {"epochs": 200, "batch_size": 2400, "lr": 0.03, "schedule": "constant"}}],
        "metrics": {"classifier_epochs": 3},
    }
    with caplog.at_level("INFO", logger="physgen"):
        payload = run_suite(suite, tmp_path)
    assert [r.getMessage() for r in caplog.records if r.name == "physgen.bench"][0] == "[tfim6] rbm: training ..."
    q = payload["results"][0]["quantum"]
    assert q["fidelity"] > 0.98 and q["kl"] < 0.05
    assert payload["data"]["tfim6"]["kind"] == "spins"


# --- guards: wrong answers are refused, failures are loud --------------------------------------------------


def test_default_training_beats_the_target_on_the_tutorial_protocol():
    # QuCumber tutorial 1: TFIM N = 10 open chain, J = h = 1, 10,000 σᶻ measurements; no options given
    chain = tfim(10)
    _, psi = ground_state(chain)
    samples = sample_measurements(psi, 10_000, seed=1)
    rbm = create("rbm")
    rbm.fit(samples, progress=False)
    report = tomography_report(rbm, psi, samples)
    assert report["fidelity"] >= 0.995 > report["histogram_fidelity"]


def test_tomography_report_refuses_a_state_too_large_to_enumerate():
    samples = physgen.Data(torch.bernoulli(torch.full((64, 40), 0.5)), physgen.Schema(kind="spins"))
    rbm = create("rbm", gradient="cd")
    rbm.fit(samples, epochs=1, batch_size=64, val_fraction=0.0, progress=False)
    with pytest.raises(physgen.errors.InvalidDataError, match=r"n ≤ 20; this RBM has n = 40"):
        tomography_report(rbm, np.zeros(4))


def test_odd_ring_is_refused_but_odd_open_chain_is_exact():
    with pytest.raises(physgen.errors.InvalidDataError, match="bipartite"):
        optimise_ground_state(heisenberg(9, periodic=True), iterations=5, sampler="metropolis")
    with pytest.raises(physgen.errors.InvalidDataError, match="bipartite"):
        optimise_ground_state(heisenberg(7, periodic=True), iterations=5, sampler="exact")
    # an open chain of 7 sites is bipartite: Marshall's rule holds and VMC is variational
    chain = heisenberg(7, periodic=False)
    e0, _ = ground_state(chain)
    result = optimise_ground_state(chain, alpha=2, iterations=300, exact_energy=e0)
    assert e0 - 1e-9 <= result.energy and result.relative_error < 2e-3
    # the ground state is a degenerate doublet (S = ½): check the signed state through its energy in the original basis
    psi = state_vector(result.model, chain)
    assert psi @ (chain.matrix() @ psi) == pytest.approx(result.energy, abs=1e-9)


@pytest.mark.parametrize("sampler", ["exact", "metropolis"])
def test_negative_transverse_field_reaches_the_exact_energy(sampler):
    # h → −h is the gauge Π σᶻ: same spectrum, ground state with signs (−1)^{number of down spins}
    chain = tfim(8, h=-1.0, periodic=True)
    e0, psi0 = ground_state(chain)
    assert e0 == pytest.approx(ground_state(tfim(8, h=1.0, periodic=True))[0], abs=1e-10)
    assert (psi0 < -1e-6).any()  # the exact state is not positive
    result = optimise_ground_state(chain, iterations=200, sampler=sampler, n_samples=512, exact_energy=e0)
    assert result.energy >= e0 - 5 * result.errors[-1] - 1e-9
    assert result.relative_error < 1e-3
    assert fidelity(state_vector(result.model, chain), psi0) > 0.995


def test_non_finite_sr_steps_raise_the_shift_or_stop_with_a_typed_error():
    chain = tfim(6)
    e0, _ = ground_state(chain)
    recovered = optimise_ground_state(chain, iterations=50, lr=1e3)
    shifts = [r["diag_shift"] for r in recovered.history]
    assert shifts[-1] >= 0.1  # raised from 0.01 automatically, and recorded
    assert all(math.isfinite(e) for e in recovered.energies) and recovered.energy >= e0 - 1e-9
    with pytest.raises(physgen.errors.TrainingDivergedError, match=r"iteration \d+: .*not finite.*lower lr"):
        optimise_ground_state(chain, iterations=50, lr=1e6)
    with pytest.raises(physgen.errors.InvalidDataError, match="h = nan"):
        tfim(6, h=float("nan"))


def test_state_vector_of_an_sz_conserving_run_is_in_its_sector():
    chain = heisenberg(10, periodic=True)
    e0, psi0 = ground_state(chain, n_up=5)
    result = optimise_ground_state(chain, iterations=150, sampler="metropolis", n_samples=512, seed=1)
    assert result.model.n_up == 5
    psi = state_vector(result.model, chain)
    assert psi.shape == psi0.shape == (len(chain.sector(5)),)
    assert fidelity(psi, psi0) > 0.999
    assert result.energy == pytest.approx(e0, rel=2e-3)


def test_minsr_and_dense_sr_give_the_same_update():
    from physgen.quantum.vmc import sr_update

    gen = torch.Generator().manual_seed(0)
    o = torch.randn(40, 90, generator=gen, dtype=torch.float64)
    e_loc = torch.randn(40, generator=gen, dtype=torch.float64)
    p = torch.full((40,), 1 / 40, dtype=torch.float64)
    _, _, delta = sr_update(o, p, e_loc, 0.01)  # 40 samples < 90 parameters: the 40 × 40 system
    oc = o - p @ o
    s_mat = oc.T @ (p[:, None] * oc) + 0.01 * torch.eye(90, dtype=torch.float64)
    reference = torch.linalg.solve(s_mat, oc.T @ (p * (e_loc - p @ e_loc)))
    torch.testing.assert_close(delta, reference, rtol=1e-9, atol=1e-12)


# --- complex wave functions from measurements in Pauli bases ------------------------------------------------

TUTORIAL2_PSI = np.array([0.2861 + 0.0539j, 0.3687 - 0.3023j, -0.1672 - 0.3529j, -0.5659 - 0.4639j])


def test_basis_rotation_matches_the_kronecker_product_of_single_qubit_unitaries():
    from physgen.surrogates.complex_rbm import rotate

    s = 1 / np.sqrt(2)
    u = {"Z": np.eye(2), "X": np.array([[s, s], [s, -s]]), "Y": np.array([[s, -1j * s], [s, 1j * s]])}
    # the rows of U_b are the bras of the +1 and −1 eigenstates of each Pauli matrix
    paulis = {"X": np.array([[0, 1], [1, 0]]), "Y": np.array([[0, -1j], [1j, 0]])}
    for p, m in paulis.items():
        assert np.allclose(u[p] @ m @ u[p].conj().T, np.diag([1, -1]))
    psi = np.random.default_rng(0).normal(size=8) + 1j * np.random.default_rng(1).normal(size=8)
    for basis in ("XYZ", "ZZX", "YYY"):
        full = np.kron(np.kron(u[basis[0]], u[basis[1]]), u[basis[2]])
        codes = ["ZXY".index(c) for c in basis]
        assert np.allclose(rotate(torch.from_numpy(psi), codes).numpy(), full @ psi)


def test_pauli_measurements_follow_the_born_rule_and_round_trip_with_their_bases(tmp_path):
    from physgen.quantum import local_bases, sample_pauli_measurements

    psi = TUTORIAL2_PSI / np.linalg.norm(TUTORIAL2_PSI)
    assert local_bases(2) == ["ZZ", "XZ", "ZX", "YZ", "ZY"]
    data = sample_pauli_measurements(psi, ["YX"], 20_000, seed=0)
    # ⟨σʸ ⊗ σˣ⟩ from the outcomes against the exact expectation value
    sy, sx = np.array([[0, -1j], [1j, 0]]), np.array([[0, 1], [1, 0]])
    exact = float(np.real(psi.conj() @ np.kron(sy, sx) @ psi))
    signs = (1 - 2 * data.x.numpy()).prod(1)
    assert signs.mean() == pytest.approx(exact, abs=4 / np.sqrt(20_000))
    counts = np.bincount((data.x.numpy() @ [2, 1]).astype(int), minlength=4)
    from physgen.surrogates.complex_rbm import rotate

    p = np.abs(rotate(torch.from_numpy(psi), [2, 1]).numpy()) ** 2
    assert chisquare(counts, p * 20_000).pvalue > 1e-3
    physgen.write(data[:50], tmp_path / "train.txt")
    assert (tmp_path / "train_bases.txt").read_text().splitlines()[0] == "Y X"
    back = physgen.read(tmp_path / "train.txt", bases=tmp_path / "train_bases.txt")
    assert torch.equal(back.x, data.x[:50]) and torch.equal(back.cond, data.cond[:50])
    (tmp_path / "bad_bases.txt").write_text("Y X\nY Q\n")
    (tmp_path / "two.txt").write_text("0 1\n1 1\n")
    with pytest.raises(physgen.errors.DataFileError, match=r"bad_bases.txt.*line 2.*X, Y or Z"):
        physgen.read(tmp_path / "two.txt", bases=tmp_path / "bad_bases.txt")
    (tmp_path / "short_bases.txt").write_text("Y X\n")
    with pytest.raises(physgen.errors.DataFileError, match="1 rows of bases for the 2 measurements"):
        physgen.read(tmp_path / "two.txt", bases=tmp_path / "short_bases.txt")
    with pytest.raises(physgen.errors.DataFileError, match="does not exist"):
        physgen.read(tmp_path / "two.txt", bases=tmp_path / "missing.txt")


def test_complex_rbm_reaches_the_tutorial_fidelity_and_its_probabilities_are_exact(tmp_path):
    from physgen.quantum import basis_kl, local_bases, sample_pauli_measurements

    psi = TUTORIAL2_PSI / np.linalg.norm(TUTORIAL2_PSI)
    data = sample_pauli_measurements(psi, local_bases(2), 200, seed=0)  # QuCumber tutorial 2: 5 bases, 1,000 samples
    model = create("complex_rbm")
    model.fit(data, progress=False)
    report = tomography_report(model, psi, data)
    assert report["fidelity"] > 0.997 and report["n_bases"] == 5  # QuCumber's tutorial reaches 0.993
    assert report["basis_kl"] == pytest.approx(basis_kl(psi, model.wavefunction(), local_bases(2)))
    # a phase-blind reconstruction (the same amplitudes, all phases 0) fails the basis check
    assert basis_kl(psi, np.abs(psi), local_bases(2)) > 10 * report["basis_kl"]
    # log_prob is normalised in every basis: the four outcomes of each sum to one
    outcomes = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    for codes in ([0, 0], [1, 2], [2, 2]):
        probe = physgen.Data(outcomes, data.schema, cond=torch.tensor([codes] * 4, dtype=torch.float32))
        assert float(model.log_prob(probe).exp().sum()) == pytest.approx(1.0, abs=1e-5)
    # conditional sampling draws in the basis asked for
    yx = model.sample(torch.tensor([[2.0, 1.0]] * 4000), seed=0)
    signs = (1 - 2 * yx.x.numpy()).prod(1)
    sy, sx = np.array([[0, -1j], [1j, 0]]), np.array([[0, 1], [1, 0]])
    assert signs.mean() == pytest.approx(float(np.real(psi.conj() @ np.kron(sy, sx) @ psi)), abs=0.1)
    model.save(tmp_path / "cx")
    assert np.allclose(physgen.surrogates.load(tmp_path / "cx").wavefunction(), model.wavefunction())


def test_complex_rbm_refuses_conditions_that_are_not_one_basis_per_qubit():
    data = physgen.Data(torch.zeros(10, 3), physgen.Schema(kind="spins", cond_names=("b",)), cond=torch.zeros(10, 1))
    with pytest.raises(physgen.errors.InvalidDataError, match=r"basis of each qubit, \[N, 3\]"):
        create("complex_rbm").fit(data, epochs=1, progress=False)


def test_variational_model_saves_loads_and_samples_like_a_surrogate(tmp_path):
    from physgen.quantum.vmc import RBMWavefunction

    chain = tfim(6)
    result = optimise_ground_state(chain, iterations=100)
    result.model.save(tmp_path / "wf")
    model = RBMWavefunction.load(tmp_path / "wf")
    psi = state_vector(model, chain)
    assert np.allclose(psi, state_vector(result.model, chain)) and model.chain == chain
    # exact draws from |ψ|²: Born-rule counts and ⟨σᶻσᶻ⟩ against the state vector
    samples = model.sample(20_000, seed=0)
    assert samples.schema.kind == "spins" and samples.x.shape == (20_000, 6)
    assert torch.equal(samples.x, model.sample(20_000, seed=0).x)
    counts = np.bincount((samples.x.numpy() @ (1 << np.arange(5, -1, -1))).astype(int), minlength=64)
    expected = psi**2 * 20_000
    keep = expected > 5
    assert chisquare(counts[keep], expected[keep] * counts[keep].sum() / expected[keep].sum()).pvalue > 1e-3
    assert np.abs(zz_correlations_from_samples(samples.x.numpy()) - zz_correlations(psi)).max() < 0.05
    # beyond 20 spins: one draw from each Metropolis chain
    big = RBMWavefunction(22)
    big.chain = tfim(22)
    assert big.sample(64, seed=1, burn_in=2).x.shape == (64, 22)
    rbm = create("rbm")
    rbm.fit(sample_measurements(psi, 500), epochs=1, progress=False)
    rbm.save(tmp_path / "rbm")
    with pytest.raises(physgen.errors.CheckpointError, match="not an RBM wave function"):
        RBMWavefunction.load(tmp_path / "rbm")


# --- square lattices ---------------------------------------------------------------------------------------


def test_square_lattice_bonds_and_exact_energies():
    from physgen.quantum import square_bonds

    assert len(square_bonds(4, 4)) == 32 and len(square_bonds(4, 4, periodic=False)) == 24 and len(square_bonds(2, 2)) == 4
    # 4×4 periodic Heisenberg antiferromagnet: E₀/N = −0.7017802 J in S⃗·S⃗ units (Schulz, Ziman & Poilblanc 1996)
    lattice = heisenberg((4, 4))
    assert lattice.n == 16 and lattice.lattice == (4, 4)
    assert ground_state(lattice, n_up=8)[0] / (4 * 16) == pytest.approx(-0.7017802, abs=1e-7)
    # Marshall's rule on the checkerboard makes the 4×4 ground state positive; the odd periodic lattice is frustrated
    _, psi = ground_state(lattice)
    from physgen.quantum.vmc import _gauge_signs

    signed = psi * _gauge_signs(configurations(16), sign_rule(lattice))
    signed *= np.sign(signed[np.argmax(np.abs(signed))])
    assert signed.min() > -1e-9
    with pytest.raises(physgen.errors.InvalidDataError, match="bipartite"):
        sign_rule(heisenberg((3, 3)))
    with pytest.raises(physgen.errors.InvalidDataError, match=r"\(Lx, Ly\) with both ≥ 2"):
        tfim((4, 1))


def test_vmc_on_a_square_lattice_against_exact_diagonalisation():
    chain = tfim((4, 4), h=3.0, periodic=True)
    e0, _ = ground_state(chain)
    result = optimise_ground_state(chain, iterations=150, n_samples=512, exact_energy=e0)
    assert result.energy >= e0 - 5 * result.errors[-1]
    assert result.relative_error < 5e-4
    with pytest.raises(physgen.errors.InvalidDataError, match="translation_invariant"):
        optimise_ground_state(chain, iterations=1, translation_invariant=True)


def test_mixed_state_measurements_and_fidelities_against_closed_forms():
    from physgen.quantum import pauli_bases, sample_pauli_measurements
    from physgen.quantum.measurements import _basis_probabilities

    w = np.zeros(8, complex)
    w[[1, 2, 4]] = 1 / np.sqrt(3)  # the 3-qubit W state
    p = 0.2
    rho = (1 - p) * np.outer(w, w.conj()) + p * np.eye(8) / 8  # depolarised
    assert fidelity(rho, w) == pytest.approx(1 - p + p / 8) == fidelity(w, rho)
    # commuting (diagonal) states: Uhlmann's fidelity is the classical (Σ √(pᵢ qᵢ))²
    a, b = np.diag([0.5, 0.3, 0.2, 0.0]), np.diag([0.25, 0.25, 0.25, 0.25])
    assert fidelity(a, b) == pytest.approx(np.sum(np.sqrt(np.diag(a) * np.diag(b))) ** 2, abs=1e-7)
    assert fidelity(rho, rho) == pytest.approx(1.0, abs=1e-7)
    assert kl_divergence(rho, rho) == pytest.approx(0.0, abs=1e-12)
    bases = pauli_bases(3)
    assert len(bases) == 27 and len(set(bases)) == 27 and "XYZ" in bases
    # depolarising mixes every basis' outcome distribution with the uniform one
    for codes in ([1, 2, 0], [2, 2, 2], [0, 0, 0]):
        assert np.allclose(_basis_probabilities(rho, codes), (1 - p) * _basis_probabilities(w, codes) + p / 8)
    data = sample_pauli_measurements(rho, ["XYZ"], 8000, seed=0)
    counts = np.bincount((data.x.numpy() @ [4, 2, 1]).astype(int), minlength=8)
    assert chisquare(counts, _basis_probabilities(rho, [1, 2, 0]) * 8000).pvalue > 1e-3


# --- density matrices: linear inversion and the purified RBM ------------------------------------------------

def _depolarised_w(n: int, p: float) -> np.ndarray:
    w = np.zeros(2**n, dtype=np.complex128)
    w[[1 << k for k in range(n)]] = 1 / np.sqrt(n)
    return (1 - p) * np.outer(w, w.conj()) + p * np.eye(2**n) / 2**n


def test_linear_inversion_is_the_pauli_expansion_of_the_measured_expectations():
    from physgen.quantum import linear_inversion, pauli_bases, sample_pauli_measurements

    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 4)) + 1j * rng.normal(size=(4, 4))
    rho = a @ a.conj().T / np.trace(a @ a.conj().T)
    data = sample_pauli_measurements(rho, pauli_bases(2), 3000, seed=0)
    # an independent estimate: every one of the 16 Pauli strings from the measurements that match it
    sigma = {"I": np.eye(2), "X": np.array([[0, 1], [1, 0]]), "Y": np.array([[0, -1j], [1j, 0]]), "Z": np.diag([1.0, -1.0])}
    letters = np.array(list("ZXY"))[data.cond.numpy().astype(int)]
    signs = 1 - 2 * data.x.numpy()
    estimate = np.zeros((4, 4), dtype=np.complex128)
    for p0 in "IXYZ":
        for p1 in "IXYZ":
            rows = np.ones(len(signs), bool)
            value = np.ones(len(signs))
            for q, p in enumerate((p0, p1)):
                if p != "I":
                    rows &= letters[:, q] == p
                    value = value * signs[:, q]
            estimate += value[rows].mean() * np.kron(sigma[p0], sigma[p1]) / 4
    w, v = np.linalg.eigh(estimate)
    w = np.clip(w, 0, None)
    assert np.allclose(linear_inversion(data), (v * (w / w.sum())) @ v.conj().T, atol=1e-12)
    assert np.abs(linear_inversion(data) - rho).max() < 4 / np.sqrt(3000)


def test_density_rbm_is_the_neural_density_operator_of_torlai_and_melko():
    from physgen.quantum import pauli_bases, sample_pauli_measurements

    data = sample_pauli_measurements(_depolarised_w(3, 0.3), pauli_bases(3), 20, seed=0)
    model = create("density_rbm", alpha=2 / 3, aux_alpha=2 / 3)
    model.fit(data, epochs=1, progress=False)
    rho = model.density_matrix()
    # the paper's closed form exp[Γ⁺_λ + iΓ⁻_μ + Π] from the parameters, with no purification in sight
    par = {k: v.detach().double().numpy() for k, v in model.named_parameters()}
    v = np.array([[(k >> (2 - i)) & 1 for i in range(3)] for k in range(8)], dtype=float)

    def minus_free(part):
        return v @ par[f"{part}_b"] + np.logaddexp(0, v @ par[f"{part}_w"].T + par[f"{part}_c"]).sum(1)

    gl, gm = minus_free("amp"), minus_free("phase")
    gamma_plus = 0.5 * (gl[:, None] + gl[None, :])
    gamma_minus = 0.5 * (gm[:, None] - gm[None, :])
    ua, up, d = par["aux_u_amp"], par["aux_u_phase"], par["aux_d"]
    arg = 0.5 * (v @ ua.T)[:, None, :] + 0.5 * (v @ ua.T)[None, :, :] + 0.5j * ((v @ up.T)[:, None, :] - (v @ up.T)[None, :, :]) + d
    pi = np.log1p(np.exp(arg)).sum(2)
    expected = np.exp(gamma_plus + 1j * gamma_minus + pi)
    assert np.allclose(rho, expected / np.trace(expected), atol=1e-12)
    assert np.allclose(rho, rho.conj().T) and np.linalg.eigvalsh(rho).min() > -1e-12 and np.trace(rho).real == pytest.approx(1.0)


def test_density_rbm_reconstructs_the_depolarised_w_state_of_qucumber_tutorial_3(tmp_path):
    from physgen.quantum import basis_kl, pauli_bases, sample_pauli_measurements

    rho = _depolarised_w(2, 0.5)  # QuCumber tutorial 3: the 2-qubit W state, depolarised with p = 0.5
    data = sample_pauli_measurements(rho, pauli_bases(2), 1000, seed=0)  # 1,000 in each of the 9 bases
    model = create("density_rbm")
    model.fit(data, progress=False)
    report = tomography_report(model, rho, data)
    # QuCumber's tutorial ends at 0.966; linear inversion from the same data reaches 0.9966
    assert report["fidelity"] > 0.995 and report["fidelity"] > report["linear_inversion_fidelity"] - 0.002 and report["n_bases"] == 9
    assert report["basis_kl"] == pytest.approx(basis_kl(rho, model.density_matrix(), pauli_bases(2)))
    fitted = model.density_matrix()
    purity = float(np.real(np.trace(fitted @ fitted)))
    assert purity == pytest.approx(float(np.real(np.trace(rho @ rho))), abs=0.02)  # 0.4375: mixed, and learned as mixed
    outcomes = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    for codes in ([0, 0], [1, 2], [2, 1]):
        probe = physgen.Data(outcomes, data.schema, cond=torch.tensor([codes] * 4, dtype=torch.float32))
        assert float(model.log_prob(probe).exp().sum()) == pytest.approx(1.0, abs=1e-5)
    xx = model.sample(torch.tensor([[1.0, 1.0]] * 4000), seed=0)  # ⟨σˣσˣ⟩ = 0.5 · 1 for this state
    assert (1 - 2 * xx.x.numpy()).prod(1).mean() == pytest.approx(0.5, abs=0.07)
    model.save(tmp_path / "dm")
    assert np.allclose(physgen.surrogates.load(tmp_path / "dm").density_matrix(), fitted)


def test_density_rbm_refuses_sizes_it_cannot_enumerate():
    spins = physgen.Schema(kind="spins")
    with pytest.raises(physgen.errors.InvalidDataError, match=r"n ≤ 10; got n = 11"):
        create("density_rbm").fit(physgen.Data(torch.zeros(10, 11), spins), epochs=1, progress=False)
    with pytest.raises(physgen.errors.InvalidDataError, match=r"n \+ n_aux ≤ 20; got n = 8, n_aux = 16 \(lower aux_alpha\)"):
        create("density_rbm", aux_alpha=2.0).fit(physgen.Data(torch.zeros(10, 8), spins), epochs=1, progress=False)
    with pytest.raises(physgen.errors.InvalidDataError, match="n ≤ 10; got n = 11"):
        from physgen.quantum import linear_inversion

        linear_inversion(physgen.Data(torch.zeros(10, 11), spins))


@pytest.mark.parametrize("chain", [tfim(8, h=0.7, periodic=True), heisenberg(8, periodic=True)], ids=["tfim", "heisenberg"])
def test_incremental_metropolis_and_batched_local_energies_match_the_direct_computation(chain):
    from physgen.quantum.measurements import bits_to_index
    from physgen.quantum.vmc import (
        RBMWavefunction,
        _local_energies,
        _Metropolis,
        _stoquastic_matrix,
        sign_rule,
    )

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = RBMWavefunction(8, alpha=2, seed=3, init_std=0.4)
        # the chain carried along with θ = Wσ + b visits the same states as one that recomputes log ψ every move
        fast, slow = _Metropolis(chain, 64, seed=5), _Metropolis(chain, 64, seed=5)
        with torch.no_grad():
            s_fast, rate_fast = fast._sweep_incremental(model, 3)
            s_slow, rate_slow = slow._sweep_full(model, 3)
        assert torch.equal(s_fast, s_slow) and rate_fast == rate_slow and 0 < rate_fast < 1
        # local energies against (H'ψ)(σ)/ψ(σ) from the sparse matrix, in the gauge of the sign rule
        sites = sign_rule(chain)
        all_s = torch.from_numpy(1.0 - 2.0 * configurations(8).astype(np.float64))
        with torch.no_grad():
            psi = torch.exp(model.log_psi(all_s)).numpy()
            idx = bits_to_index(((1 - s_fast.numpy()) / 2).astype(int))
            e_loc = _local_energies(model, chain, s_fast, model.log_psi(s_fast), sites).numpy()
        exact = (_stoquastic_matrix(chain, sites) @ psi)[idx] / psi[idx]
        assert np.allclose(e_loc, exact, rtol=1e-10, atol=1e-10)
    finally:
        torch.set_default_dtype(previous)
