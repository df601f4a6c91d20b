"""resmem.ResMemClassifier and resmem.ResMemRegressor: scikit-learn's own estimator checks, Pipeline and
GridSearchCV, and their predictions against independent references (ResMem written out per query on the base
model's logits; the base plus scikit-learn's KNeighborsRegressor on the residuals)."""

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsRegressor, NearestNeighbors
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from resmem import ResMemClassifier, ResMemRegressor
from tests.conftest import resmem_by_hand

SMALL_SAMPLE_CHECKS = {
    "check_classifier_data_not_an_array": "fits 12 samples, fewer than the default k = 16: predict then raises "
    "'k = 16 exceeds the 12 training examples' rather than change k (with k = 5 the check passes, above)",
    "check_regressor_multioutput": "fits 11 samples, fewer than the default k = 16 (passes with k = 5, above)",
}
# check_array_api_input is skipped by scikit-learn itself unless SCIPY_ARRAY_API is set: ResMem takes numpy
# arrays (and torch tensors, converted), not array-API namespaces.


def expected_failures(estimator) -> dict:
    return SMALL_SAMPLE_CHECKS if estimator.k == 16 else {}


@parametrize_with_checks(
    [
        ResMemClassifier(LogisticRegression(), k=5, device="cpu"),
        ResMemClassifier(LogisticRegression(), device="cpu"),
        ResMemRegressor(LinearRegression(), k=5, device="cpu"),
        ResMemRegressor(LinearRegression(), k=5, weights="softmax", sigma=0.5, device="cpu"),
        ResMemRegressor(LinearRegression(), device="cpu"),
    ],
    expected_failed_checks=expected_failures,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    """sklearn's digits, pixels in [0, 1] with a little noise: integer pixels tie many distances, and tied
    neighbours may come in another order from faiss (float32) than from scikit-learn (float64)."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0 + 0.01 * np.random.default_rng(0).normal(size=X.shape)
    return train_test_split(X, y, test_size=0.3, random_state=0)


def by_hand(base, X_train, y_train, X_test, k, sigma, temperature, logits_of=None):
    """ResMem per query (tests/conftest.py) over a fitted base model's logits (decision_function by default)."""
    logits_of = logits_of or base.decision_function
    return resmem_by_hand(X_train, logits_of(X_train), y_train, X_test, logits_of(X_test), k, sigma, temperature)


def test_classifier_is_resmem_on_the_base_models_decision_function(digits):
    X_train, X_test, y_train, y_test = digits
    model = ResMemClassifier(LogisticRegression(max_iter=2000), k=8, sigma=0.3, temperature=2.0, device="cpu")
    model.fit(X_train, y_train)
    base = LogisticRegression(max_iter=2000).fit(X_train, y_train)
    scores = by_hand(base, X_train, y_train, X_test, 8, 0.3, 2.0)
    np.testing.assert_array_equal(model.predict(X_test), scores.argmax(axis=1))
    clipped = np.maximum(scores, 0.0)
    np.testing.assert_allclose(model.predict_proba(X_test), clipped / clipped.sum(1, keepdims=True), atol=1e-6)
    assert model.score(X_test, y_test) == pytest.approx(np.mean(scores.argmax(axis=1) == y_test))
    assert model.score(X_test, y_test) > base.score(X_test, y_test)  # the memory helps a linear model on digits


def test_binary_and_probability_only_bases(digits):
    """A binary margin f becomes the logits (0, f), whose softmax is the logistic model's own probabilities; a
    base without decision_function gives log predict_proba."""
    X_train, X_test, y_train, _ = digits
    odd_train = np.where(y_train % 2, "odd", "even")
    model = ResMemClassifier(LogisticRegression(max_iter=2000), k=6, sigma=0.5, device="cpu").fit(X_train, odd_train)
    base = LogisticRegression(max_iter=2000).fit(X_train, odd_train)
    scores = by_hand(base, X_train, np.searchsorted(base.classes_, odd_train), X_test, 6, 0.5, 1.0,
                     logits_of=lambda X: np.log(base.predict_proba(X)))  # fmt: skip
    np.testing.assert_array_equal(model.predict(X_test), base.classes_[scores.argmax(axis=1)])
    assert model.classes_.tolist() == ["even", "odd"]
    bayes = ResMemClassifier(GaussianNB(), k=6, sigma=0.5, device="cpu").fit(X_train, y_train)
    fitted = GaussianNB().fit(X_train, y_train)
    scores = by_hand(
        fitted,
        X_train,
        y_train,
        X_test,
        6,
        0.5,
        1.0,
        logits_of=lambda X: np.maximum(np.log(fitted.predict_proba(X)), np.log(np.finfo(float).tiny)),
    )
    np.testing.assert_array_equal(bayes.predict(X_test), scores.argmax(axis=1))  # fmt: skip


def test_embedding_transformer_is_fitted_on_X(digits):
    X_train, X_test, y_train, _ = digits
    model = ResMemClassifier(LogisticRegression(max_iter=2000), k=5, embedding=PCA(6, random_state=0),
                             device="cpu").fit(X_train, y_train)  # fmt: skip
    base, pca = LogisticRegression(max_iter=2000).fit(X_train, y_train), PCA(6, random_state=0).fit(X_train)
    scores = resmem_by_hand(pca.transform(X_train), base.decision_function(X_train), y_train, pca.transform(X_test),
                            base.decision_function(X_test), 5, 1.0, 1.0)  # fmt: skip
    np.testing.assert_array_equal(model.predict(X_test), scores.argmax(axis=1))


def test_pipeline_and_grid_search(digits):
    X_train, X_test, y_train, y_test = digits
    pipe = Pipeline([("scale", StandardScaler()), ("rm", ResMemClassifier(LogisticRegression(max_iter=500),
                                                                          device="cpu"))])  # fmt: skip
    search = GridSearchCV(pipe, {"rm__k": [1, 8], "rm__sigma": [0.5, 4.0]}, cv=3).fit(X_train, y_train)
    assert set(search.cv_results_["params"][0]) == {"rm__k", "rm__sigma"} and len(search.cv_results_["params"]) == 4
    refit = clone(pipe).set_params(**search.best_params_).fit(X_train, y_train)
    np.testing.assert_array_equal(search.predict(X_test), refit.predict(X_test))
    assert search.score(X_test, y_test) == refit.score(X_test, y_test) > 0.9


def test_classifier_select_sets_its_parameters(digits):
    X_train, X_test, y_train, y_test = digits
    X_fit, X_val, y_fit, y_val = train_test_split(X_train, y_train, test_size=0.3, random_state=1)
    model = ResMemClassifier(LogisticRegression(max_iter=2000), device="cpu").fit(X_fit, y_fit)
    grid = model.select(X_val, y_val, k=[1, 4, 16], sigma=[0.1, 1.0], temperature=[1.0, 3.0])
    chosen = grid[grid.selected].iloc[0]
    assert (model.k, model.sigma, model.temperature) == (chosen.k, chosen.sigma, chosen.temperature)
    assert model.score(X_val, y_val) == chosen.accuracy == grid.accuracy.max()


def test_classifier_checks_its_settings_before_fitting_the_base():
    class Unfittable(LogisticRegression):
        def fit(self, X, y):
            raise AssertionError("the base model was fitted before the settings were checked")

    X, y = np.eye(4), [0, 1, 0, 1]
    for settings, message in ((dict(k=0), "k must be a positive integer; got 0"),
                              (dict(sigma=-1), "sigma must be a finite number > 0; got -1"),
                              (dict(temperature=0), "temperature must be a finite number > 0; got 0"),
                              (dict(device="gpu"), "device must be 'auto', 'cpu', 'cuda'")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            ResMemClassifier(Unfittable(), **settings).fit(X, y)
    with pytest.raises(ValueError, match="weights must be one of \\('uniform', 'softmax'\\); got 'triangle'"):
        ResMemRegressor(LinearRegression(), weights="triangle").fit(X, [0.0, 1.0, 2.0, 3.0])


@pytest.fixture(scope="module")
def curve():
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, size=(600, 3))
    y = X.sum(axis=1) + np.sin(3 * X[:, 0]) * np.cos(2 * X[:, 1]) + 0.05 * rng.normal(size=600)
    return X[:400], X[400:], y[:400], y[400:]


def test_uniform_regressor_is_the_base_plus_k_neighbours_on_the_residuals(curve):
    X_train, X_test, y_train, _ = curve
    model = ResMemRegressor(LinearRegression(), k=7, device="cpu").fit(X_train, y_train)
    base = LinearRegression().fit(X_train, y_train)
    knn = KNeighborsRegressor(n_neighbors=7).fit(X_train, y_train - base.predict(X_train))
    np.testing.assert_allclose(model.predict(X_test), base.predict(X_test) + knn.predict(X_test), atol=1e-9)
    two = np.column_stack([y_train, -2 * y_train + X_train[:, 2]])  # several outputs at once
    both = ResMemRegressor(LinearRegression(), k=7, device="cpu").fit(X_train, two)
    base2 = LinearRegression().fit(X_train, two)
    knn2 = KNeighborsRegressor(n_neighbors=7).fit(X_train, two - base2.predict(X_train))
    np.testing.assert_allclose(both.predict(X_test), base2.predict(X_test) + knn2.predict(X_test), atol=1e-9)
    # a constant-0 base: plain kNN regression
    plain = ResMemRegressor(DummyRegressor(strategy="constant", constant=0.0), k=7, device="cpu")
    reference = KNeighborsRegressor(n_neighbors=7).fit(X_train, y_train).predict(X_test)
    np.testing.assert_allclose(plain.fit(X_train, y_train).predict(X_test), reference, atol=1e-9)


def test_softmax_regressor_weights_by_distance(curve):
    X_train, X_test, y_train, _ = curve
    model = ResMemRegressor(LinearRegression(), k=9, weights="softmax", sigma=0.05, device="cpu")
    base = LinearRegression().fit(X_train, y_train)
    residuals = y_train - base.predict(X_train)
    dist, idx = NearestNeighbors(n_neighbors=9).fit(X_train).kneighbors(X_test)
    expected = base.predict(X_test) + np.sum(scipy_softmax(-dist / 0.05, axis=1) * residuals[idx], axis=1)
    np.testing.assert_allclose(model.fit(X_train, y_train).predict(X_test), expected, atol=1e-6)  # float32 search


def test_regressor_select_is_predict_looped_over_the_grid(curve):
    X_train, X_val, y_train, y_val = curve
    model = ResMemRegressor(LinearRegression(), weights="softmax", device="cpu").fit(X_train, y_train)
    grid = model.select(X_val, y_val, k=[1, 4, 16, 64], sigma=[0.02, 0.2])
    looped = clone(model).fit(X_train, y_train)
    for row in grid.itertuples():
        mse = np.mean((looped.set_params(k=row.k, sigma=row.sigma).predict(X_val) - y_val) ** 2)
        assert row.mse == pytest.approx(mse, rel=1e-12)
    chosen = grid[grid.selected].iloc[0]
    assert chosen.mse == grid.mse.min() and (model.k, model.sigma) == (chosen.k, chosen.sigma)
    flat = ResMemRegressor(DummyRegressor(strategy="constant", constant=1.0), device="cpu").fit(
        X_train, 0 * y_train + 1
    )
    assert flat.select(X_val, 0 * y_val + 1, k=[8, 2, 4]).mse.eq(0).all() and flat.k == 2  # tie: smaller k
    with pytest.raises(ValueError, match="with weights='uniform' leave it out"):
        flat.select(X_val, y_val, k=[2], sigma=[1.0])
